"""The objective: trial parameters → stage plan → a fresh model → staged training → value.

It reports the validation metric to Optuna after every epoch (so pruners can stop it) and records
the trial as an MLflow run that always ends with the trial's state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import optuna
import torch

from sweeper.backbones import Pretrained
from sweeper.data import EncodedData, Splits
from sweeper.param_groups import make_optimizer
from sweeper.progress import Progress
from sweeper.search_space import TrialConfig, suggest_config
from sweeper.spec import Spec
from sweeper.stages import StagePlan, plan_stages
from sweeper.tracking import StudyTracker, TrialRun
from sweeper.train import (
    EpochResult,
    StateSource,
    TrainSettings,
    compute_states,
    evaluate,
    train_staged,
)

# frozen-prefix states are kept in memory up to this size; past it they are computed per batch
MEMORY_CACHE_BYTES = 3 * 2**30


@dataclass
class StudyRuntime:
    """What every trial of a study in this process shares: the loaded model, encoded data, split,
    device, tracker, and the states of the frozen prefix already computed."""

    spec: Spec
    pretrained: Pretrained
    data: EncodedData
    splits: Splits
    device: torch.device
    tracker: StudyTracker
    progress: Progress | None = None
    _states: dict[tuple[int, str], StateSource] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.data.raw.classes)

    def source(self, model, split: str, cut: int) -> StateSource:
        """The split's examples as states entering block ``cut``, cached when they fit in memory.

        Only blocks below ``cut`` run here, and those are pretrained and frozen in every trial."""
        key = (cut, split)
        if key in self._states:
            return self._states[key]
        indices = getattr(self.splits, split)
        labels = self.data.labels[torch.as_tensor(indices)]
        if self._state_bytes(model, cut, len(indices)) > MEMORY_CACHE_BYTES:
            return StateSource(cut, labels, live=(model, self.data, indices))
        states = compute_states(model, self.data, indices, cut, self.spec.train.batch_size * 4, self.device)
        self._states[key] = StateSource(cut, labels, states=states)
        return self._states[key]

    def _state_bytes(self, model, cut: int, count: int) -> int:
        probe = compute_states(model, self.data, [0, 1], cut, 2, self.device)
        return sum(v.element_size() * v.numel() for v in probe.values()) // 2 * count


def make_objective(runtime: StudyRuntime):
    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, runtime.spec.search)
        return run_trial(runtime, trial, config)

    return objective


def run_trial(runtime: StudyRuntime, trial: optuna.Trial, config: TrialConfig) -> float:
    started = time.perf_counter()
    plan = plan_for(config, runtime.pretrained.num_blocks)
    run = runtime.tracker.start_trial(
        trial.number,
        config.params(),
        {
            "sweeper.strategy": config.strategy,
            "unfrozen_blocks": str(config.unfrozen_blocks),
            "sweeper.stage_starts": ",".join(map(str, plan.stage_starts)),
        },
    )
    trial.set_user_attr("mlflow_run_id", run.run_id)
    trial.set_user_attr("strategy", config.strategy)
    if runtime.progress:
        runtime.progress.trial_started(trial.number, config.strategy, config.params())
    timing: dict[str, float] = {}
    try:
        value = _train(runtime, trial, config, plan, run, timing)
    except optuna.TrialPruned as exc:
        _end(runtime, trial, run, "PRUNED", started, timing, reason=str(exc))
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        _end(runtime, trial, run, "FAIL", started, timing, reason=reason)
        raise
    _end(runtime, trial, run, "COMPLETE", started, timing, value=value)
    return value


def plan_for(config: TrialConfig, num_blocks: int) -> StagePlan:
    return plan_stages(
        num_blocks,
        config.unfrozen_blocks,
        config.blocks_per_stage or 1,
        config.head_epochs,
        config.stage_epochs or 1,
    )


def _train(
    runtime: StudyRuntime, trial, config: TrialConfig, plan: StagePlan, run: TrialRun, timing
) -> float:
    spec = runtime.spec
    torch.manual_seed(spec.study.seed * 100_003 + trial.number)
    model = runtime.pretrained.build(runtime.num_classes).to(runtime.device)
    device_started = time.perf_counter()
    optimizer = make_optimizer(model, plan, config.head_lr, config.lr_ratio, spec.train.weight_decay)
    settings = TrainSettings(spec.train.batch_size, runtime.device, seed=spec.study.seed + trial.number)
    metric = spec.study.metric
    last: dict[str, float] = {}

    def on_epoch(result: EpochResult) -> None:
        value = result.val[metric]
        last["value"] = value
        run.log_epoch(result.epoch, _epoch_metrics(result))
        if runtime.progress:
            runtime.progress.epoch(
                trial.number,
                result.stage,
                len(plan.stages),
                result.epoch,
                plan.total_epochs,
                value,
                result.seconds,
            )
        trial.report(value, step=result.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {result.epoch} with val_{metric} {value:.4f}")

    try:
        train_staged(
            model,
            plan,
            optimizer,
            config.head_lr,
            lambda start: (runtime.source(model, "train", start), runtime.source(model, "val", start)),
            settings,
            on_epoch,
        )
    finally:
        timing["device_seconds"] = time.perf_counter() - device_started
    return last["value"]


def _epoch_metrics(result: EpochResult) -> dict[str, float]:
    metrics = {f"train_{k}": v for k, v in result.train.items()}
    metrics.update({f"val_{k}": v for k, v in result.val.items()})
    metrics["stage"] = result.stage
    metrics["epoch_seconds"] = result.seconds
    return metrics


def _end(runtime, trial, run: TrialRun, state: str, started: float, timing, value=None, reason="") -> None:
    timing["wall_seconds"] = time.perf_counter() - started
    timing.setdefault("device_seconds", 0.0)
    for key, seconds in timing.items():
        trial.set_user_attr(key, seconds)
    if reason:
        trial.set_user_attr("fail_reason" if state == "FAIL" else "prune_reason", reason)
    metrics = dict(timing)
    if value is not None:
        metrics["value"] = value
    run.end(state, metrics=metrics, reason=reason)
    if runtime.progress:
        runtime.progress.trial_ended(trial.number, state, value, reason if state == "FAIL" else "")


def evaluate_model(runtime: StudyRuntime, model, split: str, cut: int) -> dict[str, float]:
    settings = TrainSettings(runtime.spec.train.batch_size, runtime.device)
    return evaluate(model, runtime.source(model, split, cut), settings)
