"""Fine-tuning's gain over feature extraction: one interval for both sources of noise (seeds;
test examples, a sample of the population), and a sequential rule that confirms with as few
seeds as the evidence allows. Every seed is scored on the same test split (a crossed design):
``x[s, j]`` is the paired gain of seed ``s`` on test example ``j``.

Degrees of freedom: Satterthwaite's, corrected for few seeds. With the observed mean squares
plugged in, Satterthwaite is liberal at 3-5 seeds: a seed mean square small by chance makes the
variance too small and the df too large at once (normal theory, 3 seeds: 95% intervals cover
as little as 92%, one-sided 0.83% bounds miss up to 2.6 times too often). So the df (not the
variance, which stays unbiased) take each positive mean square at an upper confidence bound
``MS k / chi2_k(gamma)``, ``gamma = 1.6 sqrt(alpha)`` at one-sided level alpha (0.25 for a 95%
interval). Calibrated under normal theory: from 3 seeds on, bounds at any alpha in [0.001, 0.05]
miss at most ~3% more often than alpha, 95% intervals cover 94.9%-96.3%; exact when one term
dominates, fading as the df grow. Two seeds (1 df) stay liberal (up to ~1.3 alpha at 0.8%).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import chdtri, stdtrit

Terms = tuple[tuple[float, float], ...]  # a variance as (signed mean-square term, its df) pairs


def _satterthwaite(terms: Terms, alpha: float) -> float:
    """Satterthwaite df (≥ 1) of a sum of terms, corrected for a one-sided level ``alpha``; a sum
    without spread gets the largest df (immaterial: its interval has zero width)."""
    gamma = min(1.6 * math.sqrt(alpha), 0.5)
    bounded = [(c * k / float(chdtri(k, 1.0 - gamma)) if c > 0 else c, k) for c, k in terms]
    denominator = sum(c * c / k for c, k in bounded)
    if denominator <= 0:
        return float(max(k for _, k in terms))
    return max(sum(c for c, _ in bounded) ** 2 / denominator, 1.0)


@dataclass(frozen=True)
class GainEstimate:
    """The gain (positive = fine-tuning better), its standard error and df.

    ``seed_share``: the share of the gain's variance from the seed term. Intervals are Student-t:
    the gain is taken as about normal, its variance estimate as about a scaled chi-square. ``df``
    is the 95% interval's; ``terms``, when kept, give the df at other levels (``df_at``).
    """

    gain: float
    se: float
    df: float
    seeds: int
    examples: int
    seed_share: float
    terms: Terms = ()

    def df_at(self, alpha: float) -> float:
        """The df of a one-sided bound at ``alpha`` (of a two-sided interval at 1 - 2 alpha)."""
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"one-sided alpha must be in (0, 0.5), got {alpha}")
        return _satterthwaite(self.terms, alpha) if self.terms else self.df

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Two-sided t interval at ``confidence``; zero width when ``se`` is 0."""
        half = self._half((1.0 - confidence) / 2)
        return (self.gain - half, self.gain + half)

    def lower(self, alpha: float) -> float:
        """One-sided lower t bound: P(true gain < bound) ≈ ``alpha``."""
        return self.gain - self._half(alpha)

    def upper(self, alpha: float) -> float:
        """One-sided upper t bound: P(true gain > bound) ≈ ``alpha``."""
        return self.gain + self._half(alpha)

    def _half(self, alpha: float) -> float:
        df = self.df_at(alpha)
        return 0.0 if self.se == 0.0 else float(stdtrit(df, 1.0 - alpha)) * self.se


def _mean_squares(x: np.ndarray) -> tuple[float, float, float]:
    """(MS_A seeds, MS_B examples, MS_E residual) of the two-way layout without replication."""
    s, n = x.shape
    x = x - x[0, 0]  # shift-invariant; makes a constant array exactly zero (no rounding noise)
    rows, cols, grand = x.mean(axis=1), x.mean(axis=0), x.mean()
    ss_a, ss_b = n * float(np.sum((rows - grand) ** 2)), s * float(np.sum((cols - grand) ** 2))
    ss_e = float(np.sum((x - rows[:, None] - cols[None, :] + grand) ** 2))
    return ss_a / (s - 1), ss_b / (n - 1), ss_e / ((s - 1) * (n - 1))


def crossed_estimate(x: np.ndarray) -> GainEstimate | None:
    """The gain ``x.mean()`` of a (seeds, examples) array of paired per-example gains.

    Method: two-way crossed random-effects ANOVA without replication. With MS_A = N var(row
    means), MS_B = S var(column means), MS_E the residual mean square on (S-1)(N-1) df,
    ``(MS_A + MS_B - MS_E) / (S N)`` is unbiased for Var(x.mean()) for any two-way exchangeable
    array (seeds drawn at random, test examples a random sample; no normality needed), on
    Satterthwaite's df corrected for few seeds (module docstring). Should it be ≤ 0 (both main
    effects small, by chance), it falls back to a lower bound: each MS over S N has expectation
    ≤ Var(x.mean()) and then MS_E ≥ MS_A + MS_B is the largest, so MS_E / (S N) on (S-1)(N-1)
    df, positive unless the array is constant (a zero-width interval). ``seed_share``: the
    seed main effect's part, (MS_A - MS_E) / (MS_A + MS_B - MS_E). None below 2 seeds or examples.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"x must be a finite (seeds, examples) array, got shape {x.shape}")
    s, n = x.shape
    if s < 2 or n < 2:
        return None
    ms_a, ms_b, ms_e = _mean_squares(x)
    combined = ms_a + ms_b - ms_e
    gain, df_e = float(x.mean()), (s - 1) * (n - 1)
    if combined <= 0:  # the largest lower bound, one term; 0 for a constant array (zero width)
        return GainEstimate(gain, math.sqrt(ms_e / (s * n)), float(df_e), s, n, 0.0)
    share = min(max((ms_a - ms_e) / combined, 0.0), 1.0)
    terms = ((ms_a, s - 1), (ms_b, n - 1), (-ms_e, df_e))
    return GainEstimate(gain, math.sqrt(combined / (s * n)), _satterthwaite(terms, 0.025), s, n, share, terms)


def estimate_from_parts(
    seed_values: Sequence[float], example_variance: float, examples: int
) -> GainEstimate | None:
    """The gain of a metric that does not average over examples (macro-F1).

    ``seed_values``: the per-seed gains; ``example_variance``: a bootstrap variance, over
    resampled test examples, of the mean-over-seeds gain. Variance: ``var(seed_values, ddof=1)
    / S + example_variance``. Both parts contain the seed × example interaction, which is so
    counted twice: the variance is conservative (too large on average, never too small). The df
    are Satterthwaite's (corrected as above) with S - 1 df for the seed part and ``examples - 1``
    (large) for the bootstrap part; ``seed_share`` is the seed part's share. None below 2 seeds.
    """
    if not (math.isfinite(example_variance) and example_variance >= 0 and examples >= 2):
        raise ValueError(f"need example_variance ≥ 0 and examples ≥ 2, got {example_variance}, {examples}")
    values = np.asarray(seed_values, dtype=np.float64)
    s = len(values)
    if s < 2:
        return None
    seed_part = float(values.var(ddof=1)) / s
    total = seed_part + example_variance
    share = seed_part / total if total > 0 else 0.0
    terms = ((seed_part, s - 1), (example_variance, examples - 1))
    df = _satterthwaite(terms, 0.025)
    return GainEstimate(float(values.mean()), math.sqrt(total), df, s, examples, share, terms)


@dataclass(frozen=True)
class Look:
    """One look of the sequential rule. ``low``/``high``: the one-sided bounds at the per-look
    alpha; ``confidence``: the two-sided level whose ends they are (1 - 2 alpha_per_look)."""

    verdict: Literal["fine_tuning", "feature_extraction", "more_seeds"]
    conclusive: bool
    low: float
    high: float
    confidence: float
    reason_key: Literal["clears", "below", "straddles_budget_spent", "straddles"]


@dataclass(frozen=True)
class SequentialRule:
    """Confirm with as few seeds as the evidence allows.

    Looks happen at S = max(2, start_seeds), then after each further seed, up to max_seeds.
    Repeated looks are corrected by Bonferroni alpha spending: each look uses the one-sided
    level alpha / looks, so by the union bound P(choose fine-tuning | true gain ≤ min_gain)
    ≤ alpha whatever the stopping, as far as each look's t bound holds its level. Stopping for
    futility (upper bound below min_gain) can only lower that error.
    """

    min_gain: float
    start_seeds: int
    max_seeds: int
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not (self.max_seeds >= self.start_seeds >= 1 and self.max_seeds >= 2 and 0 < self.alpha < 0.5):
            raise ValueError(f"need max_seeds ≥ start_seeds ≥ 1, max_seeds ≥ 2, 0 < alpha < 0.5: {self}")
        if not math.isfinite(self.min_gain):
            raise ValueError(f"min_gain must be finite: {self}")

    @property
    def first_look(self) -> int:
        """The seed count of the first look."""
        return max(2, self.start_seeds)

    @property
    def looks(self) -> int:
        """The number of possible looks."""
        return self.max_seeds - self.first_look + 1

    @property
    def alpha_per_look(self) -> float:
        """The one-sided level of each look (Bonferroni)."""
        return self.alpha / self.looks

    def look(self, estimate: GainEstimate) -> Look:
        """Read one estimate: fine-tuning, feature extraction, or more seeds."""
        a = self.alpha_per_look
        low, high, confidence = estimate.lower(a), estimate.upper(a), 1.0 - 2.0 * a
        if low >= self.min_gain:
            return Look("fine_tuning", True, low, high, confidence, "clears")
        if high < self.min_gain:
            return Look("feature_extraction", True, low, high, confidence, "below")
        if estimate.seeds >= self.max_seeds:
            return Look("feature_extraction", False, low, high, confidence, "straddles_budget_spent")
        return Look("more_seeds", False, low, high, confidence, "straddles")


def run_sequential(rule: SequentialRule, draw_seed: Callable[[int], np.ndarray]) -> tuple[Look, GainEstimate]:
    """Draw seed rows (``draw_seed(s)``: seed ``s``'s per-example gains, s = 0, 1, ...) until the
    rule stops; return the last look and the estimate it read."""
    rows = [np.asarray(draw_seed(s), dtype=np.float64) for s in range(rule.first_look)]
    while True:
        estimate = crossed_estimate(np.stack(rows))
        if estimate is None:
            raise ValueError("each seed row needs at least two test examples")
        decision = rule.look(estimate)
        if decision.verdict != "more_seeds":
            return decision, estimate
        rows.append(np.asarray(draw_seed(len(rows)), dtype=np.float64))
