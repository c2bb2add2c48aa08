"""The plain staged training loop: every stage of a plan, an epoch at a time, evaluated after each.

It imports neither Optuna nor MLflow: it reports each epoch through a callback, which may raise to
stop the run (pruning). Where the states of each stage come from is `states.py`'s business; what
to train and how is `fit.py`'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sweeper.backbones.base import BlockModel
from sweeper.device import autocast
from sweeper.methods import Method
from sweeper.rollback import BestWeights, StageOutcome
from sweeper.schedule import StageSchedule
from sweeper.stages import StagePlan
from sweeper.states import StateSource


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial cannot go on."""


@dataclass
class EpochResult:
    epoch: int  # numbered across stages, from 0
    stage: int
    train: dict[str, float]
    val: dict[str, float]
    seconds: float
    val_features: torch.Tensor | None = None  # pooled, on the CPU, when the caller asked for them
    # the run's value if it stopped now: its best epoch so far (with rollback), else this one
    value: float | None = None


@dataclass
class TrainSettings:
    batch_size: int = 32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    metric: str = "accuracy"  # the validation metric that picks the best epoch
    maximize: bool = True
    rollback: bool = True  # [train] rollback: the run ends at its best epoch (rollback.py)
    schedule: str = "linear"  # [train] schedule and warmup, within each stage (schedule.py)
    warmup: float = 0.1


@dataclass
class StagedRun:
    """What `train_staged` did: every epoch, the epoch whose weights the model ends with (its best
    with rollback, else its last) and, with rollback, what became of each stage."""

    epochs: list[EpochResult]
    final: EpochResult
    stages: list[StageOutcome]


SourcesAt = Callable[[int], tuple[StateSource, StateSource]]


def train_staged(
    model: BlockModel,
    plan: StagePlan,
    optimizer: torch.optim.Optimizer,
    head_lr: float,
    sources_at: SourcesAt,
    settings: TrainSettings,
    on_epoch: Callable[[EpochResult], None],
    features_at: frozenset[int] = frozenset(),
    *,
    method: Method,
) -> StagedRun:
    """Run every stage of the plan; after each epoch evaluate and call ``on_epoch``.

    After the epochs in ``features_at`` the result also holds the pooled validation features that
    the evaluation computed (so that measuring them costs no second pass). With
    ``settings.rollback`` a stage that ends below the best epoch so far is undone before the next.

    ``sources_at(block)`` gives the (train, val) states entering ``block``. In each stage every
    block below the lowest trainable one is still pretrained and frozen, so its output is a fixed
    function of the input: the stage starts from the states entering its lowest trainable block.
    """
    epochs = _Epochs(model, plan, optimizer, settings, method, features_at)
    best = BestWeights(model, plan, settings.metric, settings.maximize) if settings.rollback else None
    results: list[EpochResult] = []
    outcomes: list[StageOutcome] = []
    for stage in plan.stages:
        train_data, val_data = sources_at(plan.entry(stage))
        # unfreeze: flags and modes come from the plan, never from the previous stage
        method.apply_stage(model, plan, stage)
        steps = stage.epochs * math.ceil(len(train_data) / settings.batch_size)
        schedule = StageSchedule(optimizer, head_lr, steps, settings.schedule, settings.warmup)
        for _ in range(stage.epochs):
            result = epochs.run(stage, len(results), train_data, val_data, schedule)
            results.append(result)
            result.value = result.val[settings.metric]
            if best is not None:
                best.offer(result.epoch, result.val)
                result.value = best.best_value
            on_epoch(result)
        if best is not None:
            outcomes.append(best.end_stage(stage.index, results[-1].val))
    final = results[best.best_epoch] if best is not None else results[-1]
    return StagedRun(results, final, outcomes)


class _Epochs:
    """One epoch of a stage: train, evaluate (with the pooled features where asked), time it."""

    def __init__(self, model, plan, optimizer, settings: TrainSettings, method: Method, features_at):
        self.model, self.plan, self.optimizer, self.settings = model, plan, optimizer, settings
        self.method, self.features_at = method, features_at
        self.generator = torch.Generator().manual_seed(settings.seed)

    def run(self, stage, epoch: int, train_data, val_data, schedule: StageSchedule) -> EpochResult:
        started = time.perf_counter()
        train_metrics = _train_one_epoch(
            self.model, self.optimizer, train_data, self.settings, self.generator, schedule
        )
        features: list[torch.Tensor] | None = [] if epoch in self.features_at else None
        val_metrics = evaluate(self.model, val_data, self.settings, features)
        # evaluate() put every part in eval mode; restore the stage's modes
        self.method.apply_stage(self.model, self.plan, stage)
        pooled = torch.cat(features).float().cpu() if features else None
        return EpochResult(
            epoch, stage.index, train_metrics, val_metrics, time.perf_counter() - started, pooled
        )


def _train_one_epoch(model, optimizer, data: StateSource, settings, generator, schedule: StageSchedule):
    # nothing here waits for the GPU: losses and logits are summed up once, after the epoch
    losses, sizes, logits_seen, labels_seen = [], [], [], []
    for state, labels in data.batches(settings.batch_size, settings.device, generator):
        with autocast(settings.device):
            logits = model.forward_from(state, data.start, first_trainable=data.start)
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        schedule.before_step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        sizes.append(len(labels))
        logits_seen.append(logits.detach())
        labels_seen.append(labels)
    seen = sum(sizes)
    total = float(torch.stack(losses) @ torch.tensor(sizes, dtype=torch.float32, device=losses[0].device))
    if not math.isfinite(total):
        # a NaN or inf in any batch carries into the sum; the trial fails at the epoch's end
        raise NonFiniteLossError(f"training loss is {total} over an epoch of {seen} examples")
    correct = int((torch.cat(logits_seen).argmax(1) == torch.cat(labels_seen)).sum())
    return {"loss": total / seen, "accuracy": correct / seen}


@torch.no_grad()
def evaluate(
    model: BlockModel, data: StateSource, settings: TrainSettings, features: list | None = None
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 of the model on a split, in eval mode; its pooled features,
    in order, are appended to ``features`` when a list is given."""
    model.eval()
    logits_seen, labels_seen = [], []
    for state, labels in data.batches(settings.batch_size * 4, settings.device):
        with autocast(settings.device):
            pooled = model.features_from(state, data.start)
            logits_seen.append(model.head(pooled).float())
        if features is not None:
            features.append(pooled)
        labels_seen.append(labels)
    logits, labels = torch.cat(logits_seen), torch.cat(labels_seen)
    loss = float(F.cross_entropy(logits, labels, reduction="sum"))
    predicted, truth = logits.argmax(1).cpu(), labels.cpu()
    return {
        "loss": loss / len(truth),
        "accuracy": float((predicted == truth).float().mean()),
        "macro_f1": macro_f1(predicted, truth, num_classes=model.head.out_features),
    }


def macro_f1(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = int(((predicted == c) & (truth == c)).sum())
        fp = int(((predicted == c) & (truth != c)).sum())
        fn = int(((predicted != c) & (truth == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0
