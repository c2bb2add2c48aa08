"""The gain's interval over seeds and test examples, and the sequential confirmation rule.

Hand-checked cases, then simulations of synthetic paired studies with a known gain: a
population of test examples with p_fe ~ U(0.2, 0.8) and p_ft = p_fe + gain + d (d symmetric, so
the true gain is exactly ``gain``), a per-seed shift of each arm, and correctness correlated
across seeds and between the arms as real models' is.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.special import ndtr
from scipy.stats import chi2, t

from sweeper.report.stats import (
    GainEstimate,
    Look,
    SequentialRule,
    crossed_estimate,
    estimate_from_parts,
    run_sequential,
)

STUDIES = 2000


def corrected_df(terms: list[tuple[float, int]], alpha: float = 0.025) -> float:
    """Satterthwaite's df with each positive mean square at its upper bound MS k / chi2_k(gamma),
    gamma = 1.6 sqrt(alpha) (0.253 for a 95% interval)."""
    bounded = [(c * k / chi2.ppf(1.6 * math.sqrt(alpha), k) if c > 0 else c, k) for c, k in terms]
    return max(sum(c for c, _ in bounded) ** 2 / sum(c * c / k for c, k in bounded), 1.0)


@dataclass(frozen=True)
class Setting:
    """The noise of a synthetic study: the arms' per-seed shifts (sd, clipped to ±0.05), the
    spread of the per-example gain, the test examples and the correlation of correctness."""

    seed_sd: float = 0.015
    frozen_sd: float = 0.005
    spread: float = 0.08
    examples: int = 500
    rho: float = 0.8


BALANCED = Setting()
SEED_DOMINATED = Setting(seed_sd=0.02, spread=0.02, examples=1000)
EXAMPLE_DOMINATED = Setting(seed_sd=0.002, frozen_sd=0.001, examples=300, rho=0.97)
CLEAR = Setting(seed_sd=0.002, frozen_sd=0.001, spread=0.04, examples=2000)  # ~99.7% stop at the first look


class Study:
    """One simulated paired study: a fresh test split drawn from the population, then seeds."""

    def __init__(self, rng: np.random.Generator, gain: float, setting: Setting) -> None:
        self.rng, self.setting, n = rng, setting, setting.examples
        self.p_fe = rng.uniform(0.2, 0.8, n)
        self.p_ft = self.p_fe + gain + rng.uniform(-setting.spread, setting.spread, n)
        low = min(self.p_fe.min(), self.p_ft.min()) - 0.05
        high = max(self.p_fe.max(), self.p_ft.max()) + 0.05
        assert 0 < low and high < 1  # every probability, shifted by at most ±0.05, stays in (0, 1)
        self.z = rng.standard_normal(n)  # an example's difficulty, shared by every seed and both arms

    def seed_rows(self, seeds: int) -> np.ndarray:
        """(seeds, examples) per-example gains, correct_ft - correct_fe, of fresh paired seeds."""
        s, rng = self.setting, self.rng
        a = np.clip(rng.normal(0, s.seed_sd, (seeds, 1)), -0.05, 0.05)  # fine-tuned arm's shift
        b = np.clip(rng.normal(0, s.frozen_sd, (seeds, 1)), -0.05, 0.05)  # frozen arm's shift
        u = ndtr(s.rho * self.z + math.sqrt(1 - s.rho**2) * rng.standard_normal((seeds, s.examples)))
        return (u < self.p_ft + a).astype(np.float64) - (u < self.p_fe + b)

    def draw_seed(self, seed: int) -> np.ndarray:
        """One seed's row, for run_sequential."""
        return self.seed_rows(1)[0]


def test_crossed_estimate_matches_hand_computed_mean_squares():
    # x = row effect (1, 0, -1) + column effect (1, 0, 0, -1) + a residual whose rows and
    # columns sum to 0 (+-1 in the top-left 2x2 block); grand mean 0.
    x = np.array([[3, 0, 1, 0], [0, 1, 0, -1], [0, -1, -1, -2]], dtype=float)
    # MS_A = N var(row means) = 4 * var(1, 0, -1) = 4 * 1 = 4
    # MS_B = S var(col means) = 3 * var(1, 0, 0, -1) = 3 * 2/3 = 2
    # MS_E = SS_E / ((S-1)(N-1)) = 4 / 6 = 2/3
    # Var(mean) = (4 + 2 - 2/3) / 12 = 4/9, se = 2/3; seed share (4 - 2/3) / (16/3) = 0.625
    estimate = crossed_estimate(x)
    assert estimate is not None
    assert (estimate.gain, estimate.se, estimate.seed_share) == pytest.approx((0.0, 2 / 3, 0.625))
    assert (estimate.seeds, estimate.examples) == (3, 4)
    # Satterthwaite with the observed mean squares: (16/3)^2 / (16/2 + 4/3 + (4/9)/6) = 3.024;
    # the 95% df take MS_A, MS_B at their upper bounds (gamma = 1.6 sqrt(0.025) = 0.253):
    # 4 * 2 / chi2_2(0.253) = 8 / 0.5833 = 13.714, 2 * 3 / chi2_3(0.253) = 6 / 1.2250 = 4.898,
    # df = (13.714 + 4.898 - 0.667)^2 / (13.714^2 / 2 + 4.898^2 / 3 + 0.667^2 / 6) = 3.154
    assert corrected_df([(4, 2), (2, 3), (-2 / 3, 6)]) == pytest.approx(3.154, abs=0.001)
    assert estimate.df == pytest.approx(corrected_df([(4, 2), (2, 3), (-2 / 3, 6)]))
    half = t.ppf(0.975, estimate.df) * 2 / 3
    assert estimate.interval() == pytest.approx((-half, half))
    # a one-sided bound at alpha uses gamma = 1.6 sqrt(alpha): smaller alpha, smaller df
    df_05 = corrected_df([(4, 2), (2, 3), (-2 / 3, 6)], alpha=0.05)
    assert estimate.df_at(0.05) == pytest.approx(df_05) and estimate.df_at(0.005) < estimate.df < df_05
    assert estimate.lower(0.05) == pytest.approx(-t.ppf(0.95, df_05) * 2 / 3)
    assert estimate.upper(0.05) == pytest.approx(t.ppf(0.95, df_05) * 2 / 3)


def test_all_equal_array_gives_a_zero_width_interval_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (0.0, 0.1, -1.0):
            estimate = crossed_estimate(np.full((3, 50), value))
            assert estimate is not None and estimate.se == 0.0
            assert estimate.interval() == pytest.approx((value, value))
            assert estimate.lower(0.01) == estimate.upper(0.01) == estimate.gain
            assert math.isfinite(estimate.df) and estimate.seed_share == 0.0
        zero = estimate_from_parts([0.02, 0.02], 0.0, 100)
        assert zero is not None and zero.interval() == pytest.approx((0.02, 0.02))


def test_negative_variance_combination_falls_back_to_the_residual_mean_square():
    # pure interaction: row and column means all 0, so MS_A = MS_B = 0; SS_E = 4 on 1 df,
    # MS_E = 4: MS_A + MS_B - MS_E < 0 -> MS_E / (S N) = 4 / 4, se 1, df 1
    estimate = crossed_estimate(np.array([[1.0, -1.0], [-1.0, 1.0]]))
    assert estimate is not None
    assert (estimate.se, estimate.df, estimate.seed_share) == (pytest.approx(1.0), 1.0, 0.0)
    # the identity plus row offsets (0, 0.01, 0.02): MS_A = 3 var(0, 0.01, 0.02) = 3e-4, column
    # means all equal (MS_B = 0), residual = eye - 1/3: SS_E = 3 (2/3)^2 + 6 (1/3)^2 = 2 on
    # 4 df, MS_E = 1/2 -> the combination is < 0: se = sqrt(0.5 / 9), df 4
    estimate = crossed_estimate(np.eye(3) + np.array([[0.0], [0.01], [0.02]]))
    assert estimate is not None
    assert (estimate.se, estimate.df) == (pytest.approx(math.sqrt(0.5 / 9)), 4.0)


def test_fewer_than_two_seeds_gives_none():
    assert crossed_estimate(np.ones((1, 10))) is None
    assert crossed_estimate(np.ones((3, 1))) is None
    assert estimate_from_parts([0.05], 1e-4, 100) is None
    with pytest.raises(ValueError):
        crossed_estimate(np.ones(10))
    with pytest.raises(ValueError):
        estimate_from_parts([0.01, 0.02], -1.0, 100)


def test_estimate_from_parts_adds_the_seed_and_bootstrap_variances():
    # seeds (0.02, 0.04, 0.06): mean 0.04, var 0.0004, seed part 0.0004 / 3 = 1.333e-4;
    # bootstrap part 1e-4: total 2.333e-4, se 0.015275, seed share 4/7
    estimate = estimate_from_parts([0.02, 0.04, 0.06], 1e-4, 1000)
    assert estimate is not None
    assert (estimate.gain, estimate.se, estimate.seed_share) == pytest.approx(
        (0.04, math.sqrt(7 / 3 * 1e-4), 4 / 7)
    )
    assert estimate.df == pytest.approx(corrected_df([(0.0004 / 3, 2), (1e-4, 999)]))
    assert 2 <= estimate.df < 999


def coverage(setting: Setting, seed: int) -> tuple[dict[int, float], dict[int, float]]:
    """Share of STUDIES simulated studies (true gain 0.01) whose 95% interval covers the gain,
    and the mean seed share, for 3, 5 and 10 seeds (the first seeds of each 10-seed study)."""
    rng, gain = np.random.default_rng(seed), 0.01
    covered, share = {3: 0, 5: 0, 10: 0}, {3: 0.0, 5: 0.0, 10: 0.0}
    for _ in range(STUDIES):
        x = Study(rng, gain, setting).seed_rows(10)
        for seeds in covered:
            estimate = crossed_estimate(x[:seeds])
            assert estimate is not None
            low, high = estimate.interval(0.95)
            covered[seeds] += low <= gain <= high
            share[seeds] += estimate.seed_share / STUDIES
    return {s: c / STUDIES for s, c in covered.items()}, share


@pytest.mark.parametrize(
    ("setting", "seed_share"),
    [(BALANCED, (0.3, 0.7)), (SEED_DOMINATED, (0.75, 1.0)), (EXAMPLE_DOMINATED, (0.0, 0.25))],
    ids=["balanced", "seed_dominated", "example_dominated"],
)
def test_interval_covers_the_true_gain_95_percent_of_the_time(setting, seed_share):
    covered, share = coverage(setting, seed=20240)
    print(f"coverage {covered}, mean seed share {share}")
    for seeds, rate in covered.items():
        assert 0.93 <= rate <= 0.97, (seeds, rate)
        assert seed_share[0] <= share[seeds] <= seed_share[1], (seeds, share[seeds])


def sequential_outcomes(gain: float, rule: SequentialRule, seed: int) -> list[tuple[Look, GainEstimate]]:
    rng = np.random.default_rng(seed)
    return [run_sequential(rule, Study(rng, gain, BALANCED).draw_seed) for _ in range(STUDIES)]


def test_sequential_rule_chooses_fine_tuning_at_most_alpha_of_the_time_at_min_gain():
    rule = SequentialRule(min_gain=0.01, start_seeds=3, max_seeds=8)
    at_min = sequential_outcomes(0.01, rule, seed=7)
    at_zero = sequential_outcomes(0.0, rule, seed=8)
    wrong_at_min = np.mean([look.verdict == "fine_tuning" for look, _ in at_min])
    wrong_at_zero = np.mean([look.verdict == "fine_tuning" for look, _ in at_zero])
    budget_spent = np.mean([look.reason_key == "straddles_budget_spent" for look, _ in at_min])
    mean_seeds = np.mean([estimate.seeds for _, estimate in at_zero])
    print(f"P(fine_tuning): {wrong_at_min:.4f} at gain = min_gain, {wrong_at_zero:.4f} at gain 0")
    print(f"inconclusive at min_gain {budget_spent:.3f}; mean seeds at gain 0 {mean_seeds:.2f}")
    assert wrong_at_min <= rule.alpha
    assert wrong_at_zero <= 0.005
    assert budget_spent > 0.5  # at min_gain the evidence rarely settles: the budget ends


def test_clear_win_stops_at_the_first_look_with_fine_tuning():
    rule = SequentialRule(min_gain=0.01, start_seeds=3, max_seeds=8)
    look, estimate = run_sequential(rule, Study(np.random.default_rng(1), 0.08, CLEAR).draw_seed)
    assert (look.verdict, look.conclusive, look.reason_key, estimate.seeds) == (
        "fine_tuning",
        True,
        "clears",
        3,
    )
    assert look.low >= 0.01 and look.confidence == pytest.approx(1 - 2 * 0.05 / 6)


def test_clear_loss_stops_at_the_first_look_with_feature_extraction():
    rule = SequentialRule(min_gain=0.01, start_seeds=3, max_seeds=8)
    look, estimate = run_sequential(rule, Study(np.random.default_rng(2), -0.05, CLEAR).draw_seed)
    assert (look.verdict, look.conclusive, look.reason_key) == ("feature_extraction", True, "below")
    assert estimate.seeds == 3 and look.high < 0.01


def test_gain_at_min_gain_spends_the_budget_and_ends_inconclusive():
    # each seed's row is a reshuffle of the same 200 per-example gains (10 wins, 8 losses):
    # every look's gain is exactly min_gain = 0.01 with a positive se, so it always straddles
    rng = np.random.default_rng(3)
    base = np.concatenate([np.ones(10), -np.ones(8), np.zeros(182)])
    rule = SequentialRule(min_gain=0.01, start_seeds=3, max_seeds=8)
    drawn: list[int] = []

    def draw_seed(seed: int) -> np.ndarray:
        drawn.append(seed)
        return rng.permutation(base)

    look, estimate = run_sequential(rule, draw_seed)
    assert (look.verdict, look.conclusive, look.reason_key) == (
        "feature_extraction",
        False,
        "straddles_budget_spent",
    )
    assert estimate.seeds == 8 and drawn == list(range(8))
    assert look.low < 0.01 < look.high and estimate.gain == pytest.approx(0.01)


def test_rule_looks_and_validation():
    rule = SequentialRule(min_gain=0.01, start_seeds=3, max_seeds=8)
    assert (rule.first_look, rule.looks, rule.alpha_per_look) == (3, 6, pytest.approx(0.05 / 6))
    assert SequentialRule(0.0, start_seeds=1, max_seeds=4).looks == 3  # the first look needs 2 seeds
    assert SequentialRule(0.0, start_seeds=5, max_seeds=5).looks == 1
    for start, most in ((4, 3), (0, 3), (1, 1)):
        with pytest.raises(ValueError):
            SequentialRule(0.01, start_seeds=start, max_seeds=most)
    with pytest.raises(ValueError):
        SequentialRule(0.01, start_seeds=3, max_seeds=8, alpha=0.7)


def test_look_straddling_before_the_budget_asks_for_more_seeds():
    rule = SequentialRule(min_gain=0.01, start_seeds=3, max_seeds=8)
    straddling = GainEstimate(gain=0.01, se=0.01, df=10.0, seeds=3, examples=500, seed_share=0.5)
    look = rule.look(straddling)
    assert (look.verdict, look.conclusive, look.reason_key) == ("more_seeds", False, "straddles")
    assert look.low == pytest.approx(0.01 - t.ppf(1 - 0.05 / 6, 10) * 0.01)
    assert look.high == pytest.approx(0.01 + t.ppf(1 - 0.05 / 6, 10) * 0.01)
