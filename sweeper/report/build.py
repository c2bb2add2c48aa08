"""The decision and its evidence: the best feature-extraction config vs the best fine-tuning config.

After a search alone the comparison is provisional (each arm's best validation trial, one run
each, biased upwards by the selection). `confirm.confirm` re-trains both with several seeds and
scores them on the held-out test split; then the gain has an interval and `decision.decide`
applies the rule. The result is a typed `Report` (model.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.budget import ArmBudget
from sweeper.confirm import RuntimeFactory, Say, arm_trials, confirm, frozen_probe
from sweeper.data import Splits
from sweeper.errors import UserError
from sweeper.records import FEATURE_EXTRACTION, FINE_TUNING, STRATEGIES, StudyAttr, seconds_of
from sweeper.report.arms import arm_of
from sweeper.report.compare import (
    cheapest,
    method_gains,
    method_points,
    methods_not_completed,
    methods_note,
    picked_arm,
    picked_gain,
)
from sweeper.report.decision import (
    CONFIDENCE,
    SIMILAR_PROBE,
    SMALL_PER_CLASS,
    Gain,
    decide,
    normalised_probe,
    read_matrix,
)
from sweeper.report.forgetting import summarize_forgetting
from sweeper.report.gain import confirmation_facts
from sweeper.report.model import (
    Arm,
    ConfirmationCost,
    Cost,
    Matrix,
    Report,
    StudyCost,
)
from sweeper.report.screen import screen_of
from sweeper.report.text import command
from sweeper.spec import Spec


@dataclass(frozen=True)
class DatasetFacts:
    """Split sizes and training examples per class: the size axis of the decision matrix."""

    train_examples: int
    val_examples: int
    test_examples: int
    per_class: dict[str, int]
    per_class_min: int
    per_class_mean: float
    dropped: int = 0  # examples left out under [data] on_missing = "drop" (`RawData.dropped`)


def describe_dataset(labels: list[int], classes: list[str], splits: Splits, dropped: int = 0) -> DatasetFacts:
    counts = np.bincount(np.asarray(labels)[splits.train], minlength=len(classes))
    return DatasetFacts(
        train_examples=int(counts.sum()),
        val_examples=len(splits.val),
        test_examples=len(splits.test),
        per_class={name: int(n) for name, n in zip(classes, counts, strict=True)},
        per_class_min=int(counts.min()),
        per_class_mean=float(counts.mean()),
        dropped=dropped,
    )


def report_study(
    study: optuna.Study,
    spec: Spec,
    labels: list[int],
    classes: list[str],
    splits: Splits,
    runtime: RuntimeFactory | None = None,
    say: Say = lambda _: None,
    dropped: int = 0,
) -> Report:
    """Gather the evidence and build the report.

    ``runtime()`` gives a study runtime (model and data loaded) for the probe and the confirmation
    runs, which it trains where the study has not cached them; without it (the `study` command)
    only what the study has cached is used. ``dropped``: examples the data left out
    (`RawData.dropped`), which the report states.
    """
    _refuse_without_completed_trials(study, spec)
    probe = frozen_probe(study, runtime) if runtime is not None else study.user_attrs.get(StudyAttr.PROBE)
    test_labels = np.asarray(labels)[splits.test]

    def more(runs: dict[str, list[dict]]) -> bool:  # the evidence is not enough yet: one more seed
        gain = picked_gain(runs, spec, test_labels)
        return gain.look is None or gain.look.verdict == "more_seeds"

    confirmation = confirm(study, spec, runtime, say, train=runtime is not None, more=more)
    return build_report(
        study, spec, describe_dataset(labels, classes, splits, dropped), confirmation, probe, test_labels
    )


def build_report(
    study: optuna.Study,
    spec: Spec,
    dataset: DatasetFacts | None = None,
    confirmation: dict[str, list[dict]] | None = None,
    probe: dict | None = None,
    test_labels: np.ndarray | None = None,
) -> Report:
    """The report of a study; one without a completed trial is refused.

    Args:
        dataset: `describe_dataset` of the study's data (the matrix needs it).
        confirmation: `confirm.confirm` runs per arm; without it the report is search-only.
        probe: `confirm.frozen_probe` (the matrix's similarity axis).
        test_labels: labels of the test split, in order (the bootstrap over test examples).
    """
    _refuse_without_completed_trials(study, spec)
    metric, trials = spec.study.metric, arm_trials(study)
    confirmation = {s: runs for s, runs in (confirmation or {}).items() if runs}
    confirmed = all(s in confirmation for s in STRATEGIES)
    arms, picked, gains = _arms(study, spec, trials, confirmation if confirmed else {}, test_labels)
    fe, ft = arms.get(FEATURE_EXTRACTION), arms.get(picked)
    missing = next((s for s, arm in ((FEATURE_EXTRACTION, fe), (FINE_TUNING, ft)) if arm is None), None)
    gain = None if missing else gains.get(picked) or _search_gain(fe, ft, spec)
    rerun = command("report", spec.source_path)
    decision, reason = decide(gain, missing, spec.decision.min_gain, metric, rerun)
    compared = _compared(study, spec, arms, gains, picked, confirmed, rerun)
    return Report(
        study=spec.study.name,
        decision=decision,
        confirmed=confirmed,
        feature_extraction=fe,
        fine_tuning=ft,
        gain=gain.value if gain else None,
        gain_ci=gain.ci if gain else None,
        confidence=CONFIDENCE,
        **confirmation_facts(gain),
        **_completeness(study, spec),
        cost_ratio=_cost_ratio(fe, ft),
        gain_per_device_hour=_gain_per_device_hour(gain, fe, ft),
        **_cost_and_screen(study, spec, confirmation),
        matrix=_matrix(dataset, probe, decision, gain),
        forgetting=summarize_forgetting(study, trials.get(picked), confirmation.get(picked)),
        reason=reason + (methods_note(compared["methods"]) if gains and not missing else ""),
        **_rule(spec),
        evidence=_evidence(confirmed, confirmation, dataset, rerun),
        dropped_examples=dataset.dropped if dataset else 0,
        **compared,
    )


def _rule(spec: Spec) -> dict:
    """The report's fields of what the decision measures, and how."""
    return {
        "metric_name": spec.study.metric,
        "direction": spec.study.direction,
        "min_gain": spec.decision.min_gain,
    }


def _arms(study, spec: Spec, trials: dict, confirmation: dict, test_labels) -> tuple[dict, str, dict]:
    """Every arm (`confirm.arm_trials`), the fine-tuning arm the report decides with, and each
    confirmed method's gain over feature extraction."""
    runs = {key: arm_runs for key, arm_runs in confirmation.items() if key in trials}
    arms = {key: arm_of(study, t, runs.get(key), spec.study.metric) for key, t in trials.items()}
    gains = method_gains(runs, spec, test_labels) if runs else {}
    return arms, picked_arm(runs, spec), gains


def _compared(study, spec: Spec, arms: dict, gains: dict, picked: str, confirmed: bool, rerun: str) -> dict:
    """The report's fields of the methods comparison (`compare`); ``rerun`` confirms the study."""
    sign = 1.0 if spec.study.direction == "maximize" else -1.0
    points = method_points(study, arms, gains, picked, sign)
    name, why = cheapest(points, f"{'test' if confirmed else 'val'}_{spec.study.metric}", rerun)
    return {
        "methods": points,
        "cheapest_method": name,
        "cheapest_reason": why,
        "methods_not_completed": methods_not_completed(study, points),
    }


def _completeness(study: optuna.Study, spec: Spec) -> dict:
    """Whether the study holds its whole budget; a report made while it runs says so."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    budget = ArmBudget.of(spec).total
    note = f"{finished} of {budget} trials finished" + (f", {running} running" if running else "")
    return {"complete": finished >= budget and not running, "trials_note": note}


def _refuse_without_completed_trials(study: optuna.Study, spec: Spec) -> None:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError(
            f"study {spec.study.name!r} has no completed trial yet; run "
            f"{command('study', spec.source_path)} first"
        )


def _search_gain(fe: Arm, ft: Arm, spec: Spec) -> Gain:
    """The provisional gain of the search: the best validation trial of each arm, one run each."""
    sign = 1.0 if spec.study.direction == "maximize" else -1.0
    return Gain(sign * (ft.value - fe.value))


def _cost_ratio(fe: Arm | None, ft: Arm | None) -> float | None:
    """Fine-tuning's device-seconds per run over feature extraction's."""
    if fe is None or ft is None or fe.device_seconds <= 0:
        return None
    return ft.device_seconds / fe.device_seconds


def _gain_per_device_hour(gain: Gain | None, fe: Arm | None, ft: Arm | None) -> float | None:
    if gain is None or not fe or not ft or ft.device_seconds <= fe.device_seconds:
        return None
    return gain.value / ((ft.device_seconds - fe.device_seconds) / 3600)


def _cost_and_screen(study: optuna.Study, spec: Spec, confirmation: dict[str, list[dict]]) -> dict:
    """The study's cost, and the candidate screen that kept it (if one did), this cost beside it."""
    cost = _cost(study, confirmation)
    recorded = study.user_attrs.get(StudyAttr.SCREEN)
    return {"cost": cost, "screen": screen_of(recorded, spec.study.name, cost.study.device_seconds)}


def _cost(study: optuna.Study, confirmation: dict[str, list[dict]]) -> Cost:
    trials = study.get_trials(deepcopy=False)
    runs = [run for arm in confirmation.values() for run in arm]
    return Cost(
        StudyCost(
            trials=len(trials),
            device_seconds=sum(seconds_of(t, "device") for t in trials),
            wall_seconds=sum(seconds_of(t, "wall") for t in trials),
            elapsed_seconds=elapsed_seconds(trials),
        ),
        ConfirmationCost(
            runs=len(runs),
            device_seconds=sum(run["device_seconds"] for run in runs),
            wall_seconds=sum(run["wall_seconds"] for run in runs),
        ),
    )


def elapsed_seconds(trials: list[FrozenTrial]) -> float | None:
    """From the first trial's start to the last one's end."""
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def _matrix(dataset: DatasetFacts | None, probe, decision: str, gain: Gain | None) -> Matrix | None:
    if not dataset:
        return None
    score = normalised_probe(probe["balanced_accuracy"], probe["num_classes"]) if probe else None
    return Matrix(
        train_examples=dataset.train_examples,
        per_class=dataset.per_class,
        per_class_min=dataset.per_class_min,
        per_class_mean=dataset.per_class_mean,
        probe_balanced_accuracy=probe["balanced_accuracy"] if probe else None,
        probe_score=score,
        **read_matrix(dataset.per_class_mean, score, decision, gain),
        thresholds={"small_per_class_below": SMALL_PER_CLASS, "similar_probe_score_from": SIMILAR_PROBE},
    )


def _evidence(confirmed: bool, confirmation: dict, dataset: DatasetFacts | None, rerun: str) -> str:
    if not confirmed:
        return (
            "search only: the best trial of each strategy, scored on the validation split that "
            f"picked it (biased upwards); {rerun} confirms on the test split"
        )
    seeds = len(confirmation["fine_tuning"])
    examples = f" ({dataset.test_examples} examples)" if dataset else ""
    return (
        f"the best trial of each strategy, re-trained with {seeds} paired seeds on the training "
        f"split and scored on the held-out test split{examples}, which the search never saw"
    )
