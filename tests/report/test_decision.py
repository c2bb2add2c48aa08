"""The decision rule on constructed gains, the gain's estimate from paired runs, and the
decision-matrix reading. (The interval's coverage and the sequential rule's error rates are
checked by simulation in test_stats.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from sweeper.report.decision import (
    Gain,
    decide,
    estimate_gain,
    normalised_probe,
    read_matrix,
    sequential_rule,
)
from sweeper.report.stats import GainEstimate

REPORT = "`python -m sweeper report studies/mine.toml`"


def _gain(value: float, se: float, seeds: int = 3, max_seeds: int = 8) -> Gain:
    estimate = GainEstimate(value, se, df=50.0, seeds=seeds, examples=1000, seed_share=0.5)
    return Gain(value, seeds, estimate, sequential_rule(0.01, 3, max_seeds).look(estimate))


def test_a_clear_win_picks_fine_tuning_at_the_first_look():
    decision, reason = decide(_gain(0.05, 0.005), None, min_gain=0.01, metric="accuracy", report=REPORT)
    assert decision == "fine_tuning"
    assert reason.startswith("rule: the lower bound clears min_gain 0.01") and "over 3 paired seeds" in reason


def test_a_gain_inside_the_noise_asks_for_more_seeds_then_ends_inconclusive():
    # the mean clears min_gain, but the corrected interval does not
    pending = decide(_gain(0.02, 0.01), None, 0.01, "accuracy", REPORT)
    assert pending[0] == "feature_extraction" and pending[1].startswith(
        "provisional: confirmation is not finished"
    )
    decision, reason = decide(_gain(0.02, 0.01, seeds=8), None, 0.01, "accuracy", REPORT)
    assert decision == "feature_extraction"
    assert reason.startswith("inconclusive: after 8 seeds") and "straddles min_gain 0.01" in reason


def test_a_loss_keeps_feature_extraction_and_says_so():
    decision, reason = decide(_gain(-0.05, 0.01), None, min_gain=0.01, metric="accuracy", report=REPORT)
    assert decision == "feature_extraction" and "fine-tuning cannot reach min_gain" in reason


def test_one_seed_cannot_show_an_interval():
    decision, reason = decide(Gain(0.2, seeds=1), None, 0.01, "accuracy", REPORT)
    assert decision == "feature_extraction" and "one confirmation seed gives no interval" in reason


def test_search_only_is_provisional_and_reads_the_point_gain():
    decision, reason = decide(Gain(0.02), None, 0.01, "accuracy", REPORT)
    assert decision == "fine_tuning" and reason.startswith("provisional rule")
    assert reason.endswith(f"run {REPORT} to confirm on the test split")  # the user's spec, named
    assert decide(Gain(0.005), None, 0.01, "accuracy", REPORT)[0] == "feature_extraction"


def test_a_missing_arm_decides_by_default():
    assert decide(None, "fine_tuning", 0.01, "accuracy", REPORT)[0] == "feature_extraction"
    assert decide(None, "feature_extraction", 0.01, "accuracy", REPORT)[0] == "fine_tuning"


def test_the_gain_of_paired_runs_reads_every_seed_and_every_test_example():
    labels = np.array([0, 1, 2, 0, 1, 2])
    fe = np.array([[0, 1, 0, 0, 0, 2], [0, 1, 2, 1, 0, 2]])  # 4/6 and 4/6 right
    ft = np.array([[0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 0, 2]])  # 6/6 and 5/6 right
    zeros = np.zeros((2, 6))
    estimate = estimate_gain("accuracy", 1.0, labels, (fe, ft), (zeros, zeros), [2 / 6, 1 / 6])
    assert estimate.gain == pytest.approx(0.25) and (estimate.seeds, estimate.examples) == (2, 6)
    low, high = estimate.interval()
    assert low < 0.25 < high
    # macro-F1 does not average over examples: its example part is a bootstrap variance
    f1 = estimate_gain("macro_f1", 1.0, labels, (fe, ft), (zeros, zeros), [0.3, 0.2])
    assert f1.gain == pytest.approx(0.25) and f1.se > 0
    assert estimate_gain("accuracy", 1.0, labels[:5], (fe, ft), (zeros, zeros), [0.3, 0.2]) is None


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
    reading = read_matrix(per_class, probe, decision, _gain(0.0, 0.005))
    assert reading["quadrant"] == quadrant and reading["agreement"] == agreement


def test_large_similar_data_agrees_unless_fine_tuning_clearly_hurts():
    # the rule of thumb there: "fine-tuning the top rarely hurts; measure"
    harmless = read_matrix(5000, 0.9, "feature_extraction", _gain(0.0, 0.005))
    harmful = read_matrix(5000, 0.9, "feature_extraction", _gain(-0.05, 0.01))
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
