"""Fine-tuning methods side by side: the best configuration of each method that ran, each
confirmed as the fine-tuning arm always was (the same paired seeds, the same test split, the same
rule against feature extraction), as points of the metric against their cost.

The report decides with the method whose confirmed test mean is best (`picked_arm`). Since that
method is picked on the test split among several, each method's rule is held at ``ERROR /
methods`` (`decision.sequential_rule`): the chance that the report chooses fine-tuning with a
method whose true gain is below min_gain stays at most ``ERROR`` whichever method is picked. A
study of one method reads exactly as before. Among the methods whose confirmed gain lies within
the best's 95% interval, the cheapest is named: fewest trainable parameters, then fewest
device-seconds per run (`cheapest`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import optuna

from sweeper.records import FEATURE_EXTRACTION, FINE_TUNING, method_of, strategy_of
from sweeper.report.decision import Gain
from sweeper.report.gain import confirmed_gain
from sweeper.report.model import Arm, MethodPoint
from sweeper.report.pareto import on_front
from sweeper.report.text import count, interval_text
from sweeper.spec import Spec


def fine_tuning_arms(arms: Mapping[str, object]) -> list[str]:
    """The fine-tuning arms among ``arms`` (`confirm.arm_trials` keys), the best trial's first."""
    keys = [k for k in arms if k == FINE_TUNING or k.startswith(f"{FINE_TUNING}:")]
    return sorted(keys, key=lambda k: k != FINE_TUNING)


def picked_arm(confirmation: Mapping[str, list[dict]] | None, spec: Spec) -> str:
    """The fine-tuning arm the report decides with: of the confirmed methods, the best test mean
    (the best fine-tuning trial's method wins a tie); before confirmation, the best trial's."""
    keys = fine_tuning_arms(confirmation or {})
    if not keys:
        return FINE_TUNING
    sign = 1.0 if spec.study.direction == "maximize" else -1.0
    metric = spec.study.metric
    return max(keys, key=lambda k: sign * float(np.mean([r["test"][metric] for r in confirmation[k]])))


def method_gains(confirmation: Mapping[str, list[dict]], spec: Spec, test_labels) -> dict[str, Gain]:
    """Each confirmed method's gain over feature extraction, its interval and the rule's look."""
    keys = fine_tuning_arms(confirmation)
    fe = confirmation[FEATURE_EXTRACTION]
    return {
        key: confirmed_gain(
            {FEATURE_EXTRACTION: fe, FINE_TUNING: confirmation[key]}, spec, test_labels, len(keys)
        )
        for key in keys
    }


def picked_gain(confirmation: Mapping[str, list[dict]], spec: Spec, test_labels) -> Gain:
    """The gain the decision reads: the picked method's (`picked_arm`)."""
    return method_gains(confirmation, spec, test_labels)[picked_arm(confirmation, spec)]


def fine_tuning_trials_by_method(study: optuna.Study) -> Counter[str]:
    """How many fine-tuning trials each method ran (any state)."""
    return Counter(method_of(t) for t in study.get_trials(deepcopy=False) if strategy_of(t) == FINE_TUNING)


def method_points(
    study: optuna.Study, arms: Mapping[str, Arm | None], gains: Mapping[str, Gain], picked: str, sign: float
) -> tuple[MethodPoint, ...]:
    """Feature extraction, then each method by name: value, cost, gain and Pareto fronts. Before
    confirmation, ``gains`` is empty and the gains are the search's (no interval)."""
    trials = fine_tuning_trials_by_method(study)
    fe = arms.get(FEATURE_EXTRACTION)
    points = [_point(FEATURE_EXTRACTION, fe, fe.trials)] if fe else []
    best = gains.get(picked)
    for key in sorted(fine_tuning_arms(arms), key=lambda k: arms[k].method or ""):
        arm, gain = arms[key], gains.get(key)
        provisional = sign * (arm.value - fe.value) if fe else None
        points.append(
            replace(
                _point(arm.method, arm, trials[arm.method]),
                gain=gain.value if gain else provisional,
                gain_ci=gain.ci if gain else None,
                verdict=gain.look.verdict if gain and gain.look else None,
                picked=key == picked,
                within_best=gain.value >= best.ci[0] if gain and best and best.ci else None,
            )
        )
    return _mark_fronts(points, sign > 0)


def methods_not_completed(
    study: optuna.Study, points: tuple[MethodPoint, ...]
) -> tuple[tuple[str, int], ...]:
    """Each method that ran fine-tuning trials but completed none (pruned or failed), with its
    trials: it has no configuration to confirm, and the report says so rather than leave it out."""
    trials = fine_tuning_trials_by_method(study)
    shown = {point.method for point in points}
    return tuple((method, n) for method, n in sorted(trials.items()) if method not in shown)


def _point(method: str, arm: Arm, trials: int) -> MethodPoint:
    return MethodPoint(
        method, arm.trial, arm.value, arm.trainable_params, arm.ship_bytes, arm.device_seconds, trials
    )


def _mark_fronts(points: list[MethodPoint], maximize: bool) -> tuple[MethodPoint, ...]:
    by_seconds = on_front([(p.device_seconds, p.value) for p in points], maximize)
    counted = [i for i, p in enumerate(points) if p.trainable_params is not None]
    by_params = on_front([(points[i].trainable_params, points[i].value) for i in counted], maximize)
    params_flag = dict(zip(counted, by_params, strict=True))
    return tuple(
        replace(p, front_seconds=s, front_params=params_flag.get(i))
        for i, (p, s) in enumerate(zip(points, by_seconds, strict=True))
    )


def cheapest(points: tuple[MethodPoint, ...], metric: str, report: str) -> tuple[str | None, str]:
    """The cheapest method within the best's 95% interval, and the line that says so (or why
    none is named): fewest trainable parameters, then fewest device-seconds per run."""
    tuned = [p for p in points if p.method != FEATURE_EXTRACTION]
    best = next((p for p in tuned if p.picked), None)
    if best is None:
        return None, "no fine-tuning method completed a trial"
    if best.gain_ci is None:
        return None, (
            "the cheapest method within the best's interval needs confirmation runs (two seeds or "
            f"more, on the test split): run {report}"
        )
    within = [p for p in tuned if p.within_best]
    cheap = min(within, key=lambda p: (_or_inf(p.trainable_params), p.device_seconds))
    ci = interval_text(best.gain_ci)
    others = [p.method for p in within if p is not cheap]
    if cheap is best:
        rivals = (
            f"the others within it: {', '.join(others)}" if others else "no other method's gain lies in it"
        )
        return cheap.method, (
            f"{cheap.method}, the best method ({metric} gain {best.gain:+.4f}, 95% interval {ci}), is also "
            f"the cheapest within its interval ({_cost(cheap)}); {rivals}"
        )
    return cheap.method, (
        f"{cheap.method} is the cheapest method within the best's 95% interval: {metric} gain "
        f"{cheap.gain:+.4f} against {best.method}'s {best.gain:+.4f} {ci}, with {_cost(cheap)} "
        f"against {best.method}'s {_cost(best)}"
    )


def _cost(point: MethodPoint) -> str:
    return f"{count(point.trainable_params)} trainable parameters, {point.device_seconds:.1f} device-seconds per run"


def _or_inf(value: int | None) -> float:
    return math.inf if value is None else value


def methods_note(points: tuple[MethodPoint, ...]) -> str:
    """What the reason adds when several methods were compared (nothing for one)."""
    tuned = [p for p in points if p.method != FEATURE_EXTRACTION]
    picked = next((p for p in tuned if p.picked), None)
    if len(tuned) < 2 or picked is None:
        return ""
    return (
        f"; the fine-tuning arm is {picked.method}, the best of {len(tuned)} methods, and each "
        f"method's rule errs at most 5%/{len(tuned)}, so that the choice errs at most 5% whichever is best"
    )
