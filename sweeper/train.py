"""The plain staged training loop. It imports neither Optuna nor MLflow: it reports each epoch
through a callback, which may raise to stop the trial (pruning)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from sweeper.backbones.base import BlockModel, State
from sweeper.param_groups import set_learning_rate
from sweeper.stages import StagePlan, apply_stage


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


class StateSource:
    """Batches of (state entering block ``start``, labels): precomputed tensors (held on the
    training device when they fit), or computed live from the inputs when the prefix is not cached.
    """

    def __init__(
        self,
        start: int,
        labels: torch.Tensor,
        states: State | None = None,
        live=None,
        device: torch.device | None = None,
    ):
        self.start = start
        self.labels = labels
        self._states = _onto(states, device) if states is not None else None
        # labels live beside the states, so that a batch is sliced where it is used
        self._labels = labels.to(_home(self._states)) if self._states is not None else labels
        self._live = live  # (model, dataset, indices) for the uncached path

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Iterator[tuple[State, torch.Tensor]]:
        order = (
            torch.randperm(len(self), generator=generator)
            if generator is not None
            else torch.arange(len(self))
        )
        if self._states is None:
            yield from self._live_batches(order.split(batch_size), device)
            return
        # one copy of the order per epoch, not one per batch: slicing then never waits on the GPU
        for chunk in order.to(_home(self._states), non_blocking=True).split(batch_size):
            state = {k: v[chunk].to(device, non_blocking=True) for k, v in self._states.items()}
            yield state, self._labels[chunk].to(device, non_blocking=True)

    def _live_batches(self, chunks, device: torch.device):
        model, dataset, indices = self._live
        loader = DataLoader(
            Subset(dataset, [int(i) for i in indices]),
            batch_sampler=[c.tolist() for c in chunks],
            num_workers=_loader_workers(dataset),
            pin_memory=device.type == "cuda",
            # its own generator: iterating must not draw from the global RNG that dropout uses
            generator=torch.Generator(),
        )
        for inputs, labels in loader:
            inputs = {k: _to_device(v, device) for k, v in inputs.items()}
            with torch.no_grad(), autocast(device):
                state = model.prefix(inputs, self.start)
            yield state, labels.to(device, non_blocking=True)


def _loader_workers(dataset) -> int:
    # decoding images is worth extra processes; indexing token tensors is not
    if getattr(dataset, "raw", None) is not None and dataset.raw.modality == "image":
        return min(4, max(0, (os.cpu_count() or 1) - 1))
    return 0


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = tensor.to(device, non_blocking=True)
    if device.type == "cuda" and tensor.dim() == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def _home(states: State) -> torch.device:
    return next(iter(states.values())).device


def _onto(states: State, device: torch.device | None) -> State:
    """Cached states go to the GPU once, not once per batch, when they fit."""
    if device is None or device.type != "cuda":
        return states
    try:
        return {k: _to_device(v, device) for k, v in states.items()}
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {k: v.pin_memory() for k, v in states.items()}


@dataclass
class TrainSettings:
    batch_size: int = 32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0


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
) -> list[EpochResult]:
    """Run every stage of the plan; after each epoch evaluate and call ``on_epoch``.

    After the epochs in ``features_at`` the result also holds the pooled validation features that
    the evaluation computed (so that measuring them costs no second pass).

    ``sources_at(block)`` gives the (train, val) states entering ``block``. In each stage every
    block below the lowest trainable one is still pretrained and frozen, so its output is a fixed
    function of the input: the stage starts from the states entering its lowest trainable block.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    results, epoch = [], 0
    for stage in plan.stages:
        start = plan.entry(stage)
        train_data, val_data = sources_at(start)
        # unfreeze: flags and modes come from the plan, never from the previous stage
        apply_stage(model, plan, stage)
        set_learning_rate(optimizer, head_lr)
        for _ in range(stage.epochs):
            started = time.perf_counter()
            train_metrics = _train_one_epoch(model, optimizer, train_data, settings, generator)
            features: list[torch.Tensor] | None = [] if epoch in features_at else None
            val_metrics = evaluate(model, val_data, settings, features)
            # evaluate() put every part in eval mode; restore the stage's modes
            apply_stage(model, plan, stage)
            seconds = time.perf_counter() - started
            result = EpochResult(
                epoch,
                stage.index,
                train_metrics,
                val_metrics,
                seconds,
                torch.cat(features).float().cpu() if features else None,
            )
            results.append(result)
            on_epoch(result)
            epoch += 1
    return results


def _train_one_epoch(model, optimizer, data: StateSource, settings, generator):
    # nothing here waits for the GPU: losses and logits are summed up once, after the epoch
    losses, sizes, logits_seen, labels_seen = [], [], [], []
    for state, labels in data.batches(settings.batch_size, settings.device, generator):
        with autocast(settings.device):
            logits = model.forward_from(state, data.start, first_trainable=data.start)
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
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


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def compute_states(model: BlockModel, dataset, indices, upto: int, batch_size: int, device) -> State:
    """The states entering block ``upto`` for the given examples, on the CPU, padded alike."""
    model.eval()
    indices = np.asarray(indices)
    order = _by_length(dataset, indices)  # batches of like lengths carry little padding
    ordered = indices[order.numpy()]
    source = StateSource(upto, dataset.labels[torch.as_tensor(ordered)], live=(model, dataset, ordered))
    chunks = [{k: v.cpu() for k, v in state.items()} for state, _ in source.batches(batch_size, device)]
    restore = torch.empty_like(order)
    restore[order] = torch.arange(len(order))
    return {key: _cat_padded([c[key] for c in chunks])[restore] for key in chunks[0]}


def _by_length(dataset, indices: np.ndarray) -> torch.Tensor:
    lengths = dataset.lengths() if hasattr(dataset, "lengths") else None
    if lengths is None:
        return torch.arange(len(indices))
    return torch.argsort(lengths[torch.as_tensor(indices)], stable=True)


@torch.no_grad()
def advance_states(model: BlockModel, states: State, start: int, stop: int, batch_size: int, device) -> State:
    """States entering block ``stop``, from cached states entering block ``start`` (start <= stop)."""
    model.eval()
    count = len(next(iter(states.values())))
    chunks = []
    for chunk in torch.arange(count).split(batch_size):
        state = {k: v[chunk].to(device) for k, v in states.items()}
        with autocast(device):
            state = model.run_blocks(state, start, stop)
        chunks.append({k: v.cpu() for k, v in state.items()})
    return {key: _cat_padded([c[key] for c in chunks]) for key in chunks[0]}


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    # text states are trimmed per batch; pad the sequence dim back so batches stack
    if tensors[0].dim() >= 2 and len({t.shape[1] for t in tensors}) > 1:
        width = max(t.shape[1] for t in tensors)
        tensors = [F.pad(t, [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]) for t in tensors]
    return torch.cat(tensors)
