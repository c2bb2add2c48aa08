"""The objective: trial parameters → stage plan → a fresh model → staged training → value.

It reports the validation metric to Optuna after every epoch (so pruners can stop it) and records
the trial as an MLflow run that always ends with the trial's state.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field

import optuna
import torch

from sweeper.backbones import Pretrained
from sweeper.cache import PrefixCache, state_bytes
from sweeper.data import EncodedData, Splits
from sweeper.forgetting import ForgettingMeter
from sweeper.param_groups import make_optimizer
from sweeper.progress import Progress
from sweeper.records import KINDS, SECONDS_ATTR
from sweeper.search_space import TrialConfig, suggest_config
from sweeper.spec import Spec
from sweeper.stages import StagePlan, plan_stages
from sweeper.tracking import StudyTracker, TrialRun
from sweeper.train import (
    EpochResult,
    StateSource,
    TrainSettings,
    advance_states,
    compute_states,
    train_staged,
)

log = logging.getLogger(__name__)


@dataclass
class StudyRuntime:
    """What every trial of a study in this process shares: the loaded model, encoded data, split,
    device, tracker, and the frozen-prefix cache (``None``: compute the prefix every batch)."""

    spec: Spec
    pretrained: Pretrained
    data: EncodedData
    splits: Splits
    device: torch.device
    tracker: StudyTracker
    progress: Progress | None = None
    cache: PrefixCache | None = field(default_factory=lambda: PrefixCache(None))
    _told_uncached: bool = False
    _bytes_per_example: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pretrained.to(self.device)

    @property
    def num_classes(self) -> int:
        return len(self.data.raw.classes)

    def source(self, model, split: str, cut: int) -> StateSource:
        """The split's examples as states entering block ``cut``.

        Only blocks below ``cut`` run here, and in every trial those are pretrained and frozen (in
        eval mode), so their output is cached unless the cache is off or the preprocessing is random.
        """
        indices = getattr(self.splits, split)
        labels = self.data.labels[torch.as_tensor(indices)]
        if not self._cacheable() or self._too_big_to_cache(model, cut, len(indices)):
            return StateSource(cut, labels, live=(model, self.data, indices), device=self.device)
        batch = self.spec.train.batch_size * 4

        def compute():
            # start from the nearest lower block already cached: each block runs once per split
            for lower in range(cut - 1, -1, -1):
                below = self.cache.lookup(self._key(split, indices, lower))
                if below is not None:
                    return advance_states(model, below, lower, cut, batch, self.device)
            return compute_states(model, self.data, indices, cut, batch, self.device)

        states = self.cache.get(self._key(split, indices, cut), compute)
        return StateSource(cut, labels, states=states, device=self.device)

    def _key(self, split: str, indices, cut: int) -> dict:
        return {
            "model": self.pretrained.digest,
            "data": self._data_digest,
            "split": hashlib.sha256(indices.tobytes()).hexdigest()[:16],
            "cut": cut,
            "device": self.device.type,
            "dtype": "bfloat16" if self.device.type == "cuda" else "float32",
        }

    def _too_big_to_cache(self, model, cut: int, count: int) -> bool:
        if cut not in self._bytes_per_example:
            probe = compute_states(model, self.data, [0, 1], cut, 2, self.device)
            self._bytes_per_example[cut] = state_bytes(probe) / 2
        size = self._bytes_per_example[cut] * count
        if size > self.cache.max_entry_bytes:
            log.warning(
                "states entering block %d would take %.1f GiB (more than the cache's %.1f GiB per "
                "entry): that stage runs the frozen prefix every batch",
                cut,
                size / 2**30,
                self.cache.max_entry_bytes / 2**30,
            )
            return True
        return False

    def _cacheable(self) -> bool:
        reason = None
        if self.cache is None:
            reason = "the frozen-prefix cache is off (--no-cache)"
        elif self.data.random_augmentation:
            reason = f"the preprocessing has a random transform ({self.data.random_augmentation})"
        if reason and not self._told_uncached:
            log.warning("%s: every batch runs the frozen prefix again", reason)
            self._told_uncached = True
        return reason is None

    @functools.cached_property
    def _data_digest(self) -> str:
        return self.data.fingerprint()


def make_objective(runtime: StudyRuntime):
    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, runtime.spec.search)
        return run_trial(runtime, trial, config)

    return objective


def run_trial(runtime: StudyRuntime, trial: optuna.Trial, config: TrialConfig) -> float:
    """Train one configuration as one trial: its MLflow run opens first and always ends."""
    started = time.perf_counter()
    plan = plan_for(config, runtime.pretrained.num_blocks)
    timing: dict[str, float] = {}
    run = runtime.tracker.start_trial(
        trial.number,
        config.params(),
        {
            "sweeper.strategy": config.strategy,
            "unfrozen_blocks": str(config.unfrozen_blocks),
            "sweeper.stage_starts": ",".join(map(str, plan.stage_starts)),
        },
        # in the background, as soon as the run exists: a supervisor can end it if this worker dies
        on_created=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
    )
    # Optuna and MLflow calls are the sweep's overhead: kept small, and measured
    timing["bookkeeping_seconds"] = time.perf_counter() - started
    if runtime.progress:
        runtime.progress.trial_started(trial.number, config.strategy, config.params())
    try:
        value = _train(runtime, trial, config, plan, run, timing)
    except optuna.TrialPruned as exc:
        _end(runtime, trial, run, "PRUNED", started, timing, reason=str(exc))
        raise
    except BaseException as exc:
        reason = _failure_reason(exc)
        _end(runtime, trial, run, "FAIL", started, timing, reason=reason)
        raise
    _end(runtime, trial, run, "COMPLETE", started, timing, value=value)
    return value


def _failure_reason(exc: BaseException) -> str:
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, torch.OutOfMemoryError):
        # the worker frees the memory and goes on; the user can make the next trials fit
        reason += " (lower [train] batch_size or the top of [search] unfrozen_blocks)"
    return reason


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
    model = _on_device(runtime.pretrained.build(runtime.num_classes, trainable_from=plan.cut), runtime, plan)
    device_started = time.perf_counter()
    for split in ("train", "val") if plan.unfrozen_blocks else ():
        # the lowest states first: the higher ones are then one block's work away
        runtime.source(model, split, plan.cut)
    optimizer = make_optimizer(model, plan, config.head_lr, config.lr_ratio, spec.train.weight_decay)
    settings = TrainSettings(spec.train.batch_size, runtime.device, seed=spec.study.seed + trial.number)
    metric = spec.study.metric
    last: dict[str, float] = {}
    forgetting = ForgettingMeter(runtime, model, plan) if plan.unfrozen_blocks else None

    def on_epoch(result: EpochResult) -> None:
        value = result.val[metric]
        last["value"] = value
        figures = None
        if forgetting is not None and forgetting.is_stage_end(result.epoch):
            figures = forgetting.measure(result.stage, result.val_features)  # work, not bookkeeping
        bookkeeping_started = time.perf_counter()
        run.log_epoch(result.epoch, _epoch_metrics(result))
        if figures is not None:
            run.log_epoch(result.stage, figures)  # step = stage
            trial.set_user_attr("forgetting", forgetting.history)
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
        prune = _may_be_pruned(plan, result) and trial.should_prune()
        timing["bookkeeping_seconds"] += time.perf_counter() - bookkeeping_started
        if prune:
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
            features_at=forgetting.stage_ends if forgetting is not None else frozenset(),
        )
    finally:
        timing["device_seconds"] = time.perf_counter() - device_started
    return last["value"]


def _may_be_pruned(plan: StagePlan, result: EpochResult) -> bool:
    """A fine-tuning trial is not judged on its head-only stage: there it is only feature
    extraction, and pruning it then would stop it before its first block unfreezes."""
    return result.stage > 0 or plan.unfrozen_blocks == 0


def _on_device(model, runtime: StudyRuntime, plan: StagePlan):
    """The new head to the device: the pretrained parts are there already (channels_last for CNNs
    on a GPU, see ``Pretrained.to``), and the copies of them keep their memory format."""
    model = model.to(runtime.device)
    if runtime.spec.train.compile:
        for block in model.blocks[plan.cut :]:  # the copies this trial trains
            block.compile(dynamic=True)
    return model


def _epoch_metrics(result: EpochResult) -> dict[str, float]:
    metrics = {f"train_{k}": v for k, v in result.train.items()}
    metrics.update({f"val_{k}": v for k, v in result.val.items()})
    metrics["stage"] = result.stage
    metrics["epoch_seconds"] = result.seconds
    return metrics


def _end(runtime, trial, run: TrialRun, state: str, started: float, timing, value=None, reason="") -> None:
    timing["wall_seconds"] = time.perf_counter() - started
    timing.setdefault("device_seconds", 0.0)
    run.created()  # its id is on the trial before the trial ends (usually long since)
    trial.set_user_attr(SECONDS_ATTR, {kind: timing[f"{kind}_seconds"] for kind in KINDS})  # one write
    if reason:
        trial.set_user_attr("fail_reason" if state == "FAIL" else "prune_reason", reason)
    metrics = dict(timing)
    if value is not None:
        metrics["value"] = value
    run.end(state, metrics=metrics, reason=reason)
    if runtime.progress:
        runtime.progress.trial_ended(trial.number, state, value, reason if state == "FAIL" else "")
