"""The decision rule and the decision-matrix reading, as plain functions of numbers.

The rule: fine-tuning is chosen only when the lower bound of the gain's 95% interval is at least
``min_gain``; otherwise feature extraction, which is cheaper and keeps the pretrained features
intact. The interval (``gain_ci``) is the hull of two intervals, one per source of noise:

- seeds: a t interval over the per-seed differences of paired confirmation runs (seed i of both
  arms shares its head initialisation and batch order);
- test examples: a paired bootstrap over the test examples of the mean-over-seeds gain (the test
  split is a sample too; both arms are scored on the same resampled examples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_ROUNDS = 2000

# the decision matrix (DESIGN.md): dataset size × similarity to the pretraining data
SMALL_PER_CLASS = 1000  # training examples per class (mean) below which a dataset is "small"
SIMILAR_PROBE = 0.5  # normalised linear-probe score at or above which data is "similar"
ADVICE = {
    ("small", "similar"): ("keep the base frozen (feature extraction)", "feature_extraction"),
    ("small", "different"): ("hard case: freeze, expect lower performance", "feature_extraction"),
    ("large", "similar"): ("fine-tuning the top rarely hurts; measure", "no_loss"),
    ("large", "different"): ("unfreeze the top blocks, low learning rate", "fine_tuning"),
}


@dataclass(frozen=True)
class Gain:
    """Fine-tuning's gain over feature extraction (positive = fine-tuning better, any metric).

    ``seeds`` is 0 for a search-only gain (best validation trial of each arm, one run each).
    """

    value: float
    seeds: int = 0
    seed_ci: tuple[float, float] | None = None
    test_ci: tuple[float, float] | None = None

    @property
    def ci(self) -> tuple[float, float] | None:
        """The interval the rule reads: the hull of the seed and test-example intervals."""
        parts = [ci for ci in (self.seed_ci, self.test_ci) if ci is not None]
        if not parts:
            return None
        return (min(low for low, _ in parts), max(high for _, high in parts))


def paired_t_interval(
    differences: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Student-t interval of the mean of paired differences; None below two pairs."""
    from scipy import stats

    values = np.asarray(differences, dtype=np.float64)
    if len(values) < 2:
        return None
    mean, spread = float(values.mean()), float(values.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * spread / math.sqrt(len(values))
    return (mean - half, mean + half)


def bootstrap_interval(
    per_example_gain,
    resample_gain=None,
    size: int | None = None,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of a gain over resampled test examples.

    Either ``per_example_gain`` (a vector whose mean is the gain: accuracy, loss) or
    ``resample_gain(indices) -> gain`` with ``size`` examples (macro-F1, which does not average).
    """
    rng = np.random.default_rng(seed)
    if resample_gain is None:
        values = np.asarray(per_example_gain, dtype=np.float64)
        draws = rng.integers(0, len(values), size=(BOOTSTRAP_ROUNDS, len(values)))
        gains = values[draws].mean(axis=1)
    else:
        gains = np.array(
            [resample_gain(rng.integers(0, size, size=size)) for _ in range(BOOTSTRAP_ROUNDS // 2)]
        )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(gains, [tail, 100 - tail])
    return (float(low), float(high))


def test_example_interval(
    metric: str,
    sign: float,
    labels: np.ndarray,
    fe_predictions: np.ndarray,
    ft_predictions: np.ndarray,
    fe_losses: np.ndarray,
    ft_losses: np.ndarray,
) -> tuple[float, float] | None:
    """Paired bootstrap over test examples of the mean-over-seeds gain; arrays are (seeds, examples).

    ``sign`` is +1 when higher is better, -1 for a loss. None when the arrays do not fit the labels.
    """
    fe, ft = fe_predictions.astype(np.int64), ft_predictions.astype(np.int64)
    if fe.shape[1] != len(labels) or ft.shape[1] != len(labels):
        return None
    if metric == "accuracy":
        return bootstrap_interval(sign * ((ft == labels).mean(0) - (fe == labels).mean(0)))
    if metric == "loss":
        return bootstrap_interval(
            sign * (ft_losses.astype(np.float64).mean(0) - fe_losses.astype(np.float64).mean(0))
        )
    classes = int(max(labels.max(), fe.max(), ft.max())) + 1

    def resampled(indices: np.ndarray) -> float:
        truth = labels[indices]
        tuned = np.mean([macro_f1(p[indices], truth, classes) for p in ft])
        frozen = np.mean([macro_f1(p[indices], truth, classes) for p in fe])
        return sign * float(tuned - frozen)

    return bootstrap_interval(None, resampled, size=len(labels))


def macro_f1(predicted: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Macro-F1 over the classes present in predictions or truth (as train.macro_f1, in numpy)."""
    confusion = np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(
        classes, classes
    )
    tp = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(0) + confusion.sum(1)
    present = denominator > 0
    return float((2 * tp[present] / denominator[present]).mean()) if present.any() else 0.0


def decide(gain: Gain | None, missing: str | None, min_gain: float, metric: str) -> tuple[str, str]:
    """(decision, reason); the reason names the rule that decided."""
    if missing == "fine_tuning":
        return (
            "feature_extraction",
            "rule: no fine-tuning trial completed, so nothing beats feature extraction",
        )
    if missing == "feature_extraction":
        return (
            "fine_tuning",
            "rule: no feature-extraction trial completed; fine-tuning is the only measured option",
        )
    assert gain is not None
    shown = f"gain {gain.value:+.4f} {metric}"
    if gain.seeds == 0:
        verdict = "fine_tuning" if gain.value >= min_gain else "feature_extraction"
        sign = "≥" if verdict == "fine_tuning" else "<"
        return verdict, (
            f"provisional rule (search only: best validation trial of each arm, one run each): "
            f"{shown} {sign} min_gain {min_gain:g}; run `python -m sweeper report` to confirm on the test split"
        )
    if gain.seed_ci is None or gain.ci is None:
        return "feature_extraction", (
            f"rule: one confirmation seed gives no interval, and fine-tuning needs its interval's "
            f"lower bound ≥ min_gain {min_gain:g} ({shown}); set [budget] confirm_seeds ≥ 2"
        )
    low, high = gain.ci
    where = f"{shown}, 95% interval [{low:+.4f}, {high:+.4f}] ({_sources(gain)})"
    if low >= min_gain:
        return "fine_tuning", f"rule: the interval's lower bound clears min_gain {min_gain:g}: {where}"
    if high < 0:
        return "feature_extraction", f"rule: fine-tuning loses, its whole interval is below 0: {where}"
    return "feature_extraction", (
        f"rule: the gain is inside the noise, the interval's lower bound {low:+.4f} < min_gain "
        f"{min_gain:g}: {where}; feature extraction is cheaper and safer"
    )


def _sources(gain: Gain) -> str:
    parts = []
    if gain.seed_ci is not None:
        parts.append(f"t over {gain.seeds} paired seeds [{gain.seed_ci[0]:+.4f}, {gain.seed_ci[1]:+.4f}]")
    if gain.test_ci is not None:
        parts.append(f"bootstrap over test examples [{gain.test_ci[0]:+.4f}, {gain.test_ci[1]:+.4f}]")
    return "; ".join(parts)


def read_matrix(
    per_class_mean: float, probe_score: float | None, decision: str, gain: Gain | None
) -> dict[str, str | None]:
    """The quadrant, what the rule of thumb advises there, and whether the measurement agrees."""
    size = "small" if per_class_mean < SMALL_PER_CLASS else "large"
    similarity = None if probe_score is None else "similar" if probe_score >= SIMILAR_PROBE else "different"
    reading: dict[str, str | None] = {"size": size, "similarity": similarity}
    if similarity is None:
        return {**reading, "quadrant": None, "advice": None, "expected": None, "agreement": "unknown"}
    advice, expected = ADVICE[(size, similarity)]
    return {
        **reading,
        "quadrant": f"{size} / {similarity}",
        "advice": advice,
        "expected": expected,
        "agreement": _agreement(expected, decision, gain),
    }


def _agreement(expected: str, decision: str, gain: Gain | None) -> str:
    if expected == "no_loss":  # "rarely hurts": agrees unless fine-tuning is clearly worse
        if gain is None:
            return "unknown"
        upper = gain.ci[1] if gain.ci is not None else gain.value
        return "agrees" if upper >= 0 else "disagrees"
    return "agrees" if decision == expected else "disagrees"


def normalised_probe(balanced_accuracy: float, num_classes: int) -> float:
    """0 at chance (1 / classes), 1 at perfect: how much of the task frozen features already solve."""
    chance = 1 / num_classes
    return (balanced_accuracy - chance) / (1 - chance)
