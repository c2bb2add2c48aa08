"""One training run: a configuration, trained with one seed, from the study runtime.

This is the only path from a configuration to a trained model. The search (trial.py) and the
confirmation (confirm.py) both call `fit`, so what the report confirms is what the search
measured: the same model build, stage plan, optimizer, frozen-prefix states, batch order,
``[train]`` settings and forgetting figures. Only the seed differs, and what the caller does after
each epoch (a trial reports to Optuna and MLflow; a confirmation run does nothing).

Seeds are derived here, once: a run's ``seed`` sets its new head's initialisation (and dropout)
and its batch order, mixed with the spec's ``[study] seed``. Trial ``n`` trains with seed ``n``
(`trial_seed`); confirmation seed ``i`` with ``50_000 + i`` (`confirmation_seed`), far from any
trial's, and the same for both arms (the runs are paired).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sweeper.backbones import BlockModel
from sweeper.config import TrialConfig
from sweeper.forgetting import ForgettingMeter
from sweeper.methods import method_for, ship_bytes, trainable_params
from sweeper.param_groups import make_optimizer
from sweeper.runtime import StudyRuntime
from sweeper.stages import StagePlan
from sweeper.train import EpochResult, TrainSettings, train_staged

WEIGHT_SEED_STRIDE = 100_003  # spec seeds and run seeds never collide in the weight seed
CONFIRMATION_SEEDS_FROM = 50_000


def trial_seed(number: int) -> int:
    """The seed trial ``number`` trains with."""
    return number


def confirmation_seed(index: int) -> int:
    """The seed of confirmation run ``index`` (of either arm)."""
    return CONFIRMATION_SEEDS_FROM + index


@dataclass
class Timing:
    """Where a run's seconds went; `fit` adds to it as it goes, so it holds what was spent even
    when the run stops early (pruned, failed)."""

    prefix: float = 0.0  # the frozen-prefix states of every stage (computed, or read from the cache)
    train: float = 0.0  # the staged training, evaluations and forgetting figures included
    bookkeeping: float = 0.0  # the caller's work after each epoch (Optuna, MLflow, progress)

    @property
    def device(self) -> float:
        """The run's own work: what a user training this configuration would spend."""
        return self.prefix + self.train


@dataclass(frozen=True)
class FitEpoch:
    """One epoch as `fit` hands it to its caller."""

    result: EpochResult
    plan: StagePlan
    forgetting: dict[str, float] | None  # at the end of a fine-tuning stage: the figures, as metrics
    forgetting_history: tuple[dict, ...]  # every stage measured so far


@dataclass(frozen=True)
class FitResult:
    model: BlockModel  # with the weights of ``final``
    plan: StagePlan
    epochs: list[EpochResult]
    forgetting: list[dict]  # one entry per fine-tuning stage: {"stage", "cka", "weight_change"}
    final: EpochResult  # the epoch the model ends at: the best (with [train] rollback), else the last
    stages: list[dict]  # with rollback: per stage, kept or rolled back (`rollback.StageOutcome`)
    trainable_params: int  # parameters with requires_grad in the last stage, head included
    ship_bytes: int  # bytes on disk of what the method ships: head + changed blocks, or head + adapters


def fit(
    runtime: StudyRuntime,
    config: TrialConfig,
    seed: int,
    on_epoch: Callable[[FitEpoch], None] = lambda _: None,
    timing: Timing | None = None,
) -> FitResult:
    """Train ``config`` with ``seed``: the new head on the frozen backbone, then the planned blocks
    unfrozen stage by stage. ``on_epoch`` runs after every epoch (it may raise to stop the run).
    """
    spec = runtime.spec
    timing = timing if timing is not None else Timing()
    plan = config.plan(runtime.pretrained.num_blocks)
    # the weights first: the new head's initialisation is the first draw of the seed
    torch.manual_seed(spec.study.seed * WEIGHT_SEED_STRIDE + seed)
    model = _build(runtime, plan)

    # the frozen-prefix states of every stage, before any training (the lowest first: each higher
    # one is then a few blocks' work from it), so that training times only training
    started = time.perf_counter()
    _warm_prefix_states(runtime, model, plan)
    timing.prefix += time.perf_counter() - started

    method = method_for(config)
    method.prepare(model, plan)  # after the prefix states: those come from the pretrained blocks
    meter = ForgettingMeter(runtime, model, plan, method.block_weights) if plan.unfrozen_blocks else None
    groups = method.param_groups(model, plan)
    optimizer = make_optimizer(groups, config.head_lr, spec.train.weight_decay)
    settings = train_settings(runtime, seed=spec.study.seed + seed)
    after_epoch = _AfterEpoch(plan, meter, on_epoch, timing)
    started = time.perf_counter()
    try:
        staged = train_staged(
            model,
            plan,
            optimizer,
            config.head_lr,
            lambda start: (runtime.source(model, "train", start), runtime.source(model, "val", start)),
            settings,
            after_epoch,
            features_at=meter.stage_ends if meter is not None else frozenset(),
            method=method,
        )
    finally:
        timing.train += time.perf_counter() - started - after_epoch.seconds
    return _result(model, plan, staged, meter, method)


def train_settings(runtime: StudyRuntime, seed: int = 0) -> TrainSettings:
    """The spec's ``[train]`` settings and metric, as the training loop takes them."""
    spec = runtime.spec
    return TrainSettings(
        spec.train.batch_size,
        runtime.device,
        seed=seed,
        metric=spec.study.metric,
        maximize=spec.study.direction == "maximize",
        rollback=spec.train.rollback,
        schedule=spec.train.schedule,
        warmup=spec.train.warmup,
    )


def _result(model: BlockModel, plan: StagePlan, staged, meter: ForgettingMeter | None, method) -> FitResult:
    return FitResult(
        model,
        plan,
        staged.epochs,
        meter.history if meter is not None else [],
        staged.final,
        [outcome.as_record() for outcome in staged.stages],
        trainable_params(model),
        ship_bytes(method, model, plan),
    )


def _build(runtime: StudyRuntime, plan: StagePlan) -> BlockModel:
    """A fresh model that copies only the blocks the plan trains (the rest is shared and frozen),
    on the device; ``[train] compile`` compiles those copies."""
    model = runtime.pretrained.build(runtime.num_classes, trainable_from=plan.cut).to(runtime.device)
    if runtime.spec.train.compile:
        for block in model.blocks[plan.cut :]:
            block.compile(dynamic=True)
    return model


def _warm_prefix_states(runtime: StudyRuntime, model: BlockModel, plan: StagePlan) -> None:
    for entry in sorted({plan.entry(stage) for stage in plan.stages}):
        for split in ("train", "val"):
            runtime.warm(model, split, entry)


class _AfterEpoch:
    """What `fit` does after each epoch: the forgetting figures at a stage end (the run's work),
    then the caller's step (its bookkeeping, timed apart)."""

    def __init__(self, plan: StagePlan, meter: ForgettingMeter | None, on_epoch, timing: Timing) -> None:
        self.plan = plan
        self.meter = meter
        self.on_epoch = on_epoch
        self.timing = timing
        self.seconds = 0.0  # spent in the caller's step

    def __call__(self, result: EpochResult) -> None:
        figures = None
        if self.meter is not None and self.meter.is_stage_end(result.epoch):
            figures = self.meter.measure(result.stage, result.val_features)
        history = tuple(self.meter.history) if self.meter is not None else ()
        started = time.perf_counter()
        try:
            self.on_epoch(FitEpoch(result, self.plan, figures, history))
        finally:
            spent = time.perf_counter() - started
            self.seconds += spent
            self.timing.bookkeeping += spent
