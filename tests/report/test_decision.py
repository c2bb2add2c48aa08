"""The decision rule on constructed gains, its intervals, and the decision-matrix reading."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper.report.decision import (
    Gain,
    bootstrap_interval,
    decide,
    normalised_probe,
    paired_t_interval,
    read_matrix,
)


def test_t_interval_of_paired_differences():
    # mean 0.03, sd 0.01, t(0.975, df=2) = 4.3027: half-width 4.3027 * 0.01 / sqrt(3) = 0.02484
    low, high = paired_t_interval([0.02, 0.03, 0.04])
    assert (low, high) == pytest.approx((0.03 - 0.024841, 0.03 + 0.024841), abs=1e-5)
    assert paired_t_interval([0.05]) is None  # one pair has no spread


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_examples():
    rng = np.random.default_rng(0)
    small = rng.normal(0.03, 0.3, size=100)
    large = rng.normal(0.03, 0.3, size=10_000)
    low_s, high_s = bootstrap_interval(small)
    low_l, high_l = bootstrap_interval(large)
    assert low_s < small.mean() < high_s and low_l < large.mean() < high_l
    assert high_l - low_l < (high_s - low_s) / 5
    assert bootstrap_interval(small) == (low_s, high_s)  # seeded: the report is reproducible


def test_a_clear_win_picks_fine_tuning():
    gain = Gain(0.05, seeds=3, seed_ci=(0.04, 0.06), test_ci=(0.03, 0.07))
    decision, reason = decide(gain, None, min_gain=0.01, metric="accuracy")
    assert decision == "fine_tuning"
    assert reason.startswith("rule: the interval's lower bound clears min_gain 0.01")


def test_a_gain_inside_the_noise_keeps_feature_extraction():
    # the mean clears min_gain, but the interval does not: not enough evidence
    gain = Gain(0.02, seeds=3, seed_ci=(-0.01, 0.05), test_ci=(0.0, 0.04))
    decision, reason = decide(gain, None, min_gain=0.01, metric="accuracy")
    assert decision == "feature_extraction"
    assert "inside the noise" in reason and "-0.0100 < min_gain 0.01" in reason


def test_either_noise_source_alone_can_block_fine_tuning():
    # tight over seeds, but the test set is too small to tell
    gain = Gain(0.03, seeds=3, seed_ci=(0.025, 0.035), test_ci=(-0.01, 0.07))
    assert gain.ci == (-0.01, 0.07)
    assert decide(gain, None, 0.01, "accuracy")[0] == "feature_extraction"


def test_a_loss_keeps_feature_extraction_and_says_so():
    gain = Gain(-0.05, seeds=3, seed_ci=(-0.07, -0.03), test_ci=(-0.08, -0.02))
    decision, reason = decide(gain, None, min_gain=0.01, metric="accuracy")
    assert decision == "feature_extraction" and "fine-tuning loses" in reason


def test_one_seed_cannot_show_an_interval():
    gain = Gain(0.2, seeds=1, seed_ci=None, test_ci=(0.15, 0.25))
    decision, reason = decide(gain, None, 0.01, "accuracy")
    assert decision == "feature_extraction" and "confirm_seeds ≥ 2" in reason


def test_search_only_is_provisional_and_reads_the_point_gain():
    decision, reason = decide(Gain(0.02), None, 0.01, "accuracy")
    assert decision == "fine_tuning" and reason.startswith("provisional rule")
    assert decide(Gain(0.005), None, 0.01, "accuracy")[0] == "feature_extraction"


def test_a_missing_arm_decides_by_default():
    assert decide(None, "fine_tuning", 0.01, "accuracy")[0] == "feature_extraction"
    assert decide(None, "feature_extraction", 0.01, "accuracy")[0] == "fine_tuning"


@pytest.mark.parametrize(
    ("per_class", "probe", "decision", "quadrant", "agreement"),
    [
        (50, 0.9, "feature_extraction", "small / similar", "agrees"),
        (50, 0.9, "fine_tuning", "small / similar", "disagrees"),
        (50, 0.2, "feature_extraction", "small / different", "agrees"),
        (5000, 0.2, "fine_tuning", "large / different", "agrees"),
        (5000, 0.2, "feature_extraction", "large / different", "disagrees"),
    ],
)
def test_matrix_quadrants_and_agreement(per_class, probe, decision, quadrant, agreement):
    reading = read_matrix(per_class, probe, decision, Gain(0.0, 3, (-0.01, 0.01)))
    assert reading["quadrant"] == quadrant and reading["agreement"] == agreement


def test_large_similar_data_agrees_unless_fine_tuning_clearly_hurts():
    # the rule of thumb there: "fine-tuning the top rarely hurts; measure"
    harmless = read_matrix(5000, 0.9, "feature_extraction", Gain(0.0, 3, (-0.01, 0.01)))
    harmful = read_matrix(5000, 0.9, "feature_extraction", Gain(-0.05, 3, (-0.07, -0.03)))
    assert harmless["agreement"] == "agrees" and harmful["agreement"] == "disagrees"


def test_the_probe_score_is_zero_at_chance_and_one_when_perfect():
    assert normalised_probe(1 / 3, 3) == pytest.approx(0.0)
    assert normalised_probe(1.0, 3) == pytest.approx(1.0)


def test_the_bootstrap_macro_f1_matches_the_training_loop_s():
    import torch

    from sweeper.report.decision import macro_f1
    from sweeper.train import macro_f1 as training_macro_f1

    rng = np.random.default_rng(4)
    truth, predicted = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    expected = training_macro_f1(torch.from_numpy(predicted), torch.from_numpy(truth), num_classes=4)
    assert macro_f1(predicted, truth, 4) == pytest.approx(expected)
