"""The decision and its evidence: the best feature-extraction config vs the best fine-tuning config.

After a search alone the comparison is provisional (each arm's best validation trial, one run
each, biased upwards by the selection). `confirm.confirm` re-trains both with several seeds and
scores them on the held-out test split; then the gain has an interval and `decision.decide`
applies the rule. The result is a typed `Report` (model.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.budget import ArmBudget
from sweeper.confirm import RuntimeFactory, Say, best_trials, confirm, frozen_probe
from sweeper.data import Splits
from sweeper.errors import UserError
from sweeper.records import STRATEGIES, StudyAttr, TrialAttr, seconds_of, strategy_of
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
from sweeper.report.gain import confirmation_facts, confirmed_gain
from sweeper.report.model import (
    Arm,
    ArmConfirmation,
    ConfirmationCost,
    Cost,
    Matrix,
    Report,
    StudyCost,
)
from sweeper.rollback import ROLLED_BACK
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
        gain = confirmed_gain(runs, spec, test_labels)
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
    metric, best = spec.study.metric, best_trials(study)
    confirmation = {s: runs for s, runs in (confirmation or {}).items() if runs}
    confirmed = all(s in confirmation for s in STRATEGIES)
    arms = {s: _arm(study, best[s], confirmation.get(s) if confirmed else None, metric) for s in STRATEGIES}
    missing = next((s for s in STRATEGIES if arms[s] is None), None)
    gain = None if missing else _gain(arms, confirmation if confirmed else None, spec, test_labels)
    decision, reason = decide(gain, missing, spec.decision.min_gain, metric)
    fe, ft = arms["feature_extraction"], arms["fine_tuning"]
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
        cost=_cost(study, confirmation),
        matrix=_matrix(dataset, probe, decision, gain),
        forgetting=summarize_forgetting(study, best["fine_tuning"], confirmation.get("fine_tuning")),
        reason=reason,
        metric_name=metric,
        direction=spec.study.direction,
        min_gain=spec.decision.min_gain,
        evidence=_evidence(confirmed, confirmation, dataset),
        dropped_examples=dataset.dropped if dataset else 0,
    )


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
            f"study {spec.study.name!r} has no completed trial yet; run `python -m sweeper study "
            f"{spec.source_path}` first"
        )


def _arm(study, best: FrozenTrial | None, runs: list[dict] | None, metric: str) -> Arm | None:
    if best is None:
        return None
    strategy = strategy_of(best)
    everything = [t for t in study.get_trials(deepcopy=False) if strategy_of(t) == strategy]
    arm = Arm(
        trial=best.number,
        params=best.params,
        mlflow_run_id=best.user_attrs.get(TrialAttr.RUN_ID),
        search_value=best.value,
        value=best.value,
        device_seconds=seconds_of(best, "device"),
        wall_seconds=seconds_of(best, "wall"),
        trials=len(everything),
        arm_device_seconds=sum(seconds_of(t, "device") for t in everything),
        arm_wall_seconds=sum(seconds_of(t, "wall") for t in everything),
        stages=best.user_attrs.get(TrialAttr.STAGES),
    )
    if not runs:
        return arm
    seed_values = [run["test"][metric] for run in runs]
    # one run from scratch: the prefix states once (the arm's first seed computed them), then training
    prefix = max(run["prefix_seconds"] for run in runs)
    train = float(np.mean([run["train_seconds"] for run in runs]))
    confirmation = ArmConfirmation(
        seed_values=seed_values,
        seed_std=float(np.std(seed_values, ddof=1)) if len(runs) > 1 else None,
        test={k: float(np.mean([run["test"][k] for run in runs])) for k in runs[0]["test"]},
        confirm_val_value=float(np.mean([run["val"][metric] for run in runs])),
        prefix_seconds=prefix,
        train_seconds=train,
        rolled_back=[
            [s["stage"] for s in run.get("stages", []) if s["outcome"] == ROLLED_BACK] for run in runs
        ],
    )
    # the confirmed figures replace the search's
    return dataclasses.replace(
        arm,
        value=float(np.mean(seed_values)),
        device_seconds=prefix + train,
        wall_seconds=prefix + float(np.mean([r["wall_seconds"] - r["prefix_seconds"] for r in runs])),
        confirmation=confirmation,
    )


def _gain(arms: dict[str, Arm], confirmation, spec: Spec, test_labels) -> Gain:
    if confirmation is None:
        sign = 1.0 if spec.study.direction == "maximize" else -1.0
        return Gain(sign * (arms["fine_tuning"].value - arms["feature_extraction"].value))
    return confirmed_gain(confirmation, spec, test_labels)


def _cost_ratio(fe: Arm | None, ft: Arm | None) -> float | None:
    """Fine-tuning's device-seconds per run over feature extraction's."""
    if fe is None or ft is None or fe.device_seconds <= 0:
        return None
    return ft.device_seconds / fe.device_seconds


def _gain_per_device_hour(gain: Gain | None, fe: Arm | None, ft: Arm | None) -> float | None:
    if gain is None or not fe or not ft or ft.device_seconds <= fe.device_seconds:
        return None
    return gain.value / ((ft.device_seconds - fe.device_seconds) / 3600)


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


def _evidence(confirmed: bool, confirmation: dict, dataset: DatasetFacts | None) -> str:
    if not confirmed:
        return (
            "search only: the best trial of each strategy, scored on the validation split that "
            "picked it (biased upwards); `python -m sweeper report` confirms on the test split"
        )
    seeds = len(confirmation["fine_tuning"])
    examples = f" ({dataset.test_examples} examples)" if dataset else ""
    return (
        f"the best trial of each strategy, re-trained with {seeds} paired seeds on the training "
        f"split and scored on the held-out test split{examples}, which the search never saw"
    )
