"""The objective: an Optuna trial's parameters → `fit` → the trial's value.

A trial is one `fit` run with the trial's seed, plus its records: it reports the validation metric
to Optuna after every epoch (so pruners can stop it), keeps its forgetting figures, seconds and
stage starts in the trial's user attributes, and mirrors everything in an MLflow run that always
ends with the trial's state.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
import torch

from sweeper.config import TrialConfig
from sweeper.fit import FitEpoch, Timing, fit, trial_seed
from sweeper.progress import Progress
from sweeper.records import METHOD_PARAM, Tag, TrialAttr
from sweeper.rollback import KEPT
from sweeper.runtime import StudyRuntime
from sweeper.search_space import suggest_config
from sweeper.stages import StagePlan
from sweeper.tracking import StudyTracker, TrialRun

Objective = Callable[[optuna.Trial], float]


def make_objective(
    runtime: StudyRuntime, tracker: StudyTracker, progress: Progress | None = None
) -> Objective:
    """The study's objective: draw a configuration from the spec's [search], train it as a trial."""

    def objective(trial: optuna.Trial) -> float:
        # where each arm has its own budget, the study loop claimed this trial for one of them
        config = suggest_config(trial, runtime.spec.search, trial.user_attrs.get(TrialAttr.ARM))
        return run_trial(runtime, tracker, trial, config, progress)

    return objective


def run_trial(
    runtime: StudyRuntime,
    tracker: StudyTracker,
    trial: optuna.Trial,
    config: TrialConfig,
    progress: Progress | None = None,
) -> float:
    """Train one configuration as one trial: its MLflow run opens first and always ends."""
    record = _TrialRecord(trial, progress)
    plan = config.plan(runtime.pretrained.num_blocks)
    record.start(tracker, config, plan)
    steps = _EpochSteps(runtime, trial, record.run, progress)
    try:
        fitted = fit(runtime, config, trial_seed(trial.number), steps, record.timing)
        value = fitted.final.val[runtime.spec.study.metric]
        # inside the try: an interrupt while the records are written still fails the trial with why
        record.stages(fitted.final.epoch, fitted.stages)
        record.sizes(fitted.trainable_params, fitted.ship_bytes)
        record.end("COMPLETE", value=value)
    except optuna.TrialPruned as exc:
        record.end("PRUNED", reason=str(exc))
        raise
    except BaseException as exc:
        record.end("FAIL", reason=_failure_reason(exc))
        raise
    return value


class _TrialRecord:
    """The trial's records beside its training: its MLflow run, its seconds, its reasons. The
    Optuna and MLflow calls are the sweep's overhead: kept few, and timed as bookkeeping."""

    def __init__(self, trial: optuna.Trial, progress: Progress | None) -> None:
        self.trial = trial
        self.progress = progress
        self.started = time.perf_counter()
        self.timing = Timing()
        self.run: TrialRun | None = None

    def start(self, tracker: StudyTracker, config: TrialConfig, plan: StagePlan) -> None:
        tags = {
            Tag.STRATEGY: config.strategy,
            Tag.UNFROZEN_BLOCKS: str(config.unfrozen_blocks),
            Tag.METHOD: config.method,
            Tag.STAGE_STARTS: ",".join(map(str, plan.stage_starts)),
        }
        # in the background, as soon as the run exists: a supervisor can end it if this worker dies
        self.run = tracker.start_trial(
            self.trial.number,
            {**config.params(), METHOD_PARAM: config.method},  # the UI filters runs by method
            tags,
            on_created=lambda run_id: self.trial.set_user_attr(TrialAttr.RUN_ID, run_id),
        )
        if plan.unfrozen_blocks:  # a feature-extraction trial has one stage, at epoch 0
            self.trial.set_user_attr(TrialAttr.STAGE_STARTS, list(plan.stage_starts))
        self.timing.bookkeeping += time.perf_counter() - self.started
        if self.progress:
            self.progress.trial_started(self.trial.number, config.strategy, config.params())

    def stages(self, best_epoch: int, stages: list[dict]) -> None:
        """The epoch the trial ends at, and (with rollback) what became of each stage."""
        self.trial.set_user_attr(TrialAttr.BEST_EPOCH, best_epoch)
        if stages:
            self.trial.set_user_attr(TrialAttr.STAGES, stages)
            self.run.set_tags({Tag.STAGES: ",".join(f"{s['stage']}:{s['outcome']}" for s in stages)})
            for s in stages:
                self.run.log_epoch(s["stage"], {"stage_kept": float(s["outcome"] == KEPT)})  # step = stage
        self.run.log_epoch(0, {"best_epoch": best_epoch})

    def sizes(self, trainable_params: int, ship_bytes: int) -> None:
        """What the trained configuration costs to keep: its trainable parameters, its bytes to ship."""
        self.trial.set_user_attr(TrialAttr.TRAINABLE_PARAMS, trainable_params)
        self.trial.set_user_attr(TrialAttr.SHIP_BYTES, ship_bytes)
        self.run.log_epoch(0, {"trainable_params": trainable_params, "ship_bytes": ship_bytes})

    def end(self, state: str, value: float | None = None, reason: str = "") -> None:
        """Write the trial's seconds and reason and end its run. Again after an interrupted
        ``end("COMPLETE")``: the trial gets its reason (the run stays as first ended)."""
        wall = time.perf_counter() - self.started
        if reason:  # first: should a record below fail (an interrupted MLflow writer), the trial says why
            kind = TrialAttr.FAIL_REASON if state == "FAIL" else TrialAttr.PRUNE_REASON
            self.trial.set_user_attr(kind, reason)
        self.run.created()  # its id is on the trial before the trial ends (usually long since)
        seconds = {"wall": wall, "device": self.timing.device, "bookkeeping": self.timing.bookkeeping}
        self.trial.set_user_attr(TrialAttr.SECONDS, seconds)  # one write
        metrics = {f"{kind}_seconds": spent for kind, spent in seconds.items()}
        if value is not None:
            metrics["value"] = value
        self.run.end(state, metrics=metrics, reason=reason)
        if self.progress:
            self.progress.trial_ended(self.trial.number, state, value, reason if state == "FAIL" else "")


class _EpochSteps:
    """What a trial does after each epoch, in order: log it to its run, keep the forgetting
    figures, show progress, then report to Optuna and stop if the pruner says so."""

    def __init__(self, runtime: StudyRuntime, trial: optuna.Trial, run: TrialRun, progress: Progress | None):
        self.metric = runtime.spec.study.metric
        self.trial = trial
        self.run = run
        self.progress = progress

    def __call__(self, epoch: FitEpoch) -> None:
        self._log(epoch)
        self._keep_forgetting(epoch)
        self._show_progress(epoch, epoch.result.val[self.metric])
        # the trial's value if it stopped here (its best epoch so far, with rollback)
        self._report_or_prune(epoch, epoch.result.value)

    def _log(self, epoch: FitEpoch) -> None:
        self.run.log_epoch(epoch.result.epoch, _epoch_metrics(epoch))

    def _keep_forgetting(self, epoch: FitEpoch) -> None:
        if epoch.forgetting is not None:
            self.run.log_epoch(epoch.result.stage, epoch.forgetting)  # step = stage
            self.trial.set_user_attr(TrialAttr.FORGETTING, list(epoch.forgetting_history))

    def _show_progress(self, epoch: FitEpoch, value: float) -> None:
        if self.progress:
            result, plan = epoch.result, epoch.plan
            self.progress.epoch(
                self.trial.number,
                result.stage,
                len(plan.stages),
                result.epoch,
                plan.total_epochs,
                value,
                result.seconds,
            )

    def _report_or_prune(self, epoch: FitEpoch, value: float) -> None:
        self.trial.report(value, step=epoch.result.epoch)
        if _may_be_pruned(epoch) and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {epoch.result.epoch} with val_{self.metric} {value:.4f}"
            )


def _may_be_pruned(epoch: FitEpoch) -> bool:
    """Only fine-tuning stages are judged. A feature-extraction trial (seconds on cached features)
    always runs to its end: pruned, it would starve the tuning of the head that fine-tuning is
    measured against. A fine-tuning trial's head-only stage is feature extraction too, and pruning
    it there would stop it before its first block unfreezes."""
    return epoch.result.stage > 0


def _epoch_metrics(epoch: FitEpoch) -> dict[str, float]:
    result = epoch.result
    metrics = {f"train_{k}": v for k, v in result.train.items()}
    metrics.update({f"val_{k}": v for k, v in result.val.items()})
    metrics["stage"] = result.stage
    metrics["epoch_seconds"] = result.seconds
    return metrics


def _failure_reason(exc: BaseException) -> str:
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, torch.OutOfMemoryError):
        # the worker frees the memory and goes on; the user can make the next trials fit
        reason += " (lower [train] batch_size or the top of [search] unfrozen_blocks)"
    return reason
