"""The decision rule and the decision-matrix reading, as plain functions of numbers.

The rule: fine-tuning is chosen only when its gain over feature extraction clears ``min_gain``
with the error of that choice held at 5% (``stats.SequentialRule``). The gain's interval accounts
for both sources of noise at once (``stats.crossed_estimate``): the seeds (paired confirmation
runs: seed i of both arms shares its head initialisation and batch order) and the test examples
(the test split is a sample too; every seed is scored on the same examples). Confirmation adds a
paired seed while the interval straddles ``min_gain``, up to ``[budget] max_confirm_seeds``; each
look is corrected for the repeated looks. Undecided at the budget, the answer is feature
extraction (cheaper, safer), and the report says it is inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sweeper.report.stats import GainEstimate, Look, SequentialRule, crossed_estimate, estimate_from_parts

CONFIDENCE = 0.95  # the interval the report shows; each look of the rule uses its own, corrected
ERROR = 0.05  # the chance of choosing fine-tuning when its true gain is below min_gain, at most
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

    ``seeds`` is 0 for a search-only gain (best validation trial of each arm, one run each);
    ``estimate`` and ``look`` exist once two paired seeds have run.
    """

    value: float
    seeds: int = 0
    estimate: GainEstimate | None = None
    look: Look | None = None

    @property
    def ci(self) -> tuple[float, float] | None:
        """The gain's 95% interval (seeds and test examples together)."""
        return self.estimate.interval(CONFIDENCE) if self.estimate is not None else None


def sequential_rule(
    min_gain: float, confirm_seeds: int, max_confirm_seeds: int, methods: int = 1
) -> SequentialRule:
    """The rule for one method's gain when ``methods`` fine-tuning methods are each compared with
    feature extraction: each at ``ERROR / methods`` (Bonferroni), so the chance that any of them
    is chosen while its true gain is below min_gain stays at most ``ERROR``."""
    return SequentialRule(min_gain, confirm_seeds, max_confirm_seeds, ERROR / methods)


def estimate_gain(
    metric: str,
    sign: float,
    labels: np.ndarray,
    predictions: tuple[np.ndarray, np.ndarray],
    losses: tuple[np.ndarray, np.ndarray],
    differences: list[float],
) -> GainEstimate | None:
    """The gain's estimate from paired runs: arrays are (seeds, examples), feature extraction's
    first. ``sign`` is +1 when higher is better, -1 for a loss; ``differences`` are the per-seed
    gains. Accuracy and loss average over examples (`stats.crossed_estimate`); macro-F1 does not,
    so its example part is a bootstrap variance (`stats.estimate_from_parts`)."""
    fe, ft = (p.astype(np.int64) for p in predictions)
    if fe.shape[1] != len(labels) or ft.shape[1] != len(labels) or len(differences) < 2:
        return None
    if metric == "accuracy":
        x = (ft == labels).astype(np.float64) - (fe == labels)
    elif metric == "loss":
        x = losses[1].astype(np.float64) - losses[0].astype(np.float64)
    else:
        return estimate_from_parts(differences, _macro_f1_variance(labels, fe, ft, sign), len(labels))
    estimate = crossed_estimate(sign * x)
    # centred on the gain of the runs' own test metrics (the per-example losses are stored rounded)
    return None if estimate is None else replace(estimate, gain=float(np.mean(differences)))


def _macro_f1_variance(labels: np.ndarray, fe: np.ndarray, ft: np.ndarray, sign: float) -> float:
    """Bootstrap variance, over resampled test examples, of the mean-over-seeds macro-F1 gain."""
    rng = np.random.default_rng(0)
    classes = int(max(labels.max(), fe.max(), ft.max())) + 1
    gains = []
    for _ in range(BOOTSTRAP_ROUNDS // 4):
        idx = rng.integers(0, len(labels), size=len(labels))
        tuned = np.mean([macro_f1(p[idx], labels[idx], classes) for p in ft])
        frozen = np.mean([macro_f1(p[idx], labels[idx], classes) for p in fe])
        gains.append(sign * float(tuned - frozen))
    return float(np.var(gains, ddof=1))


def macro_f1(predicted: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Macro-F1 over the classes present in predictions or truth (as train.macro_f1, in numpy)."""
    confusion = np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(
        classes, classes
    )
    tp = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(0) + confusion.sum(1)
    present = denominator > 0
    return float((2 * tp[present] / denominator[present]).mean()) if present.any() else 0.0


def decide(
    gain: Gain | None, missing: str | None, min_gain: float, metric: str, report: str
) -> tuple[str, str]:
    """(decision, reason); the reason names the rule that decided, and ``report`` is the command
    that confirms it (or adds seeds) where it is provisional."""
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
            f"{shown} {sign} min_gain {min_gain:g}; run {report} to confirm on the test split"
        )
    if gain.look is None:
        return "feature_extraction", (
            f"rule: one confirmation seed gives no interval, and fine-tuning needs its lower bound "
            f"≥ min_gain {min_gain:g} ({shown}); run {report} to add seeds"
        )
    return _read_look(gain, gain.look, min_gain, shown, report)


def _read_look(gain: Gain, look: Look, min_gain: float, shown: str, report: str) -> tuple[str, str]:
    bounds = f"[{look.low:+.4f}, {look.high:+.4f}] at {look.confidence:.1%} (corrected for repeated looks)"
    where = f"{shown} over {gain.seeds} paired seeds, interval {bounds}"
    if look.verdict == "fine_tuning":
        return "fine_tuning", f"rule: the lower bound clears min_gain {min_gain:g}: {where}"
    if look.verdict == "more_seeds":
        return "feature_extraction", (
            f"provisional: confirmation is not finished ({where} straddles min_gain {min_gain:g}); "
            f"run {report} to add seeds"
        )
    if look.conclusive:
        return "feature_extraction", (
            f"rule: fine-tuning cannot reach min_gain {min_gain:g}, the upper bound is below it: {where}"
        )
    return "feature_extraction", (
        f"inconclusive: after {gain.seeds} seeds, the budget ([budget] max_confirm_seeds), the "
        f"interval still straddles min_gain {min_gain:g}: {where}; feature extraction is cheaper and safer"
    )


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
        ci = gain.ci
        upper = ci[1] if ci is not None else gain.value
        return "agrees" if upper >= 0 else "disagrees"
    return "agrees" if decision == expected else "disagrees"


def normalised_probe(balanced_accuracy: float, num_classes: int) -> float:
    """0 at chance (1 / classes), 1 at perfect: how much of the task frozen features already solve."""
    chance = 1 / num_classes
    return (balanced_accuracy - chance) / (1 - chance)
