"""Frozen-prefix states: what enters the lowest block a stage trains, and where it comes from.

In every stage the blocks below the lowest trainable one are still pretrained and frozen (in eval
mode), so what enters that block is a fixed function of the input. `PrefixStates` decides, once per
(split, block), whether to take it from the frozen-prefix cache (computing it once, from the
nearest lower block already cached) or to run the frozen prefix live on every batch: when the
cache is off, the preprocessing is random, or the states would not fit an entry. A `StateSource`
hands either kind out in batches.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from sweeper.backbones.base import BlockModel, State
from sweeper.cache import PrefixCache, state_bytes
from sweeper.data import EncodedData
from sweeper.device import autocast, to_device
from sweeper.interrupts import die_with_parent

log = logging.getLogger(__name__)


class StateSource:
    """Batches of (state entering block ``start``, labels): precomputed tensors (held on the
    training device when they fit), or computed live from the inputs when the prefix is not cached.
    """

    def __init__(
        self,
        start: int,
        labels: torch.Tensor,
        states: State | None = None,
        live: tuple[BlockModel, EncodedData, np.ndarray] | None = None,
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
            pin_memory=device.type == "cuda",
            # its own generator: iterating must not draw from the global RNG that dropout uses
            generator=torch.Generator(),
            **loader_processes(_loader_workers(dataset)),
        )
        for inputs, labels in loader:
            inputs = {k: to_device(v, device) for k, v in inputs.items()}
            with torch.no_grad(), autocast(device):
                state = model.prefix(inputs, self.start)
            yield state, labels.to(device, non_blocking=True)


def _loader_workers(dataset) -> int:
    # decoding images is worth extra processes; indexing token tensors is not
    if getattr(dataset, "raw", None) is not None and dataset.raw.modality == "image":
        return min(4, max(0, (os.cpu_count() or 1) - 1))
    return 0


def loader_processes(count: int) -> dict:
    """DataLoader arguments for ``count`` worker processes that die with the process iterating.

    Under a ``--workers`` process the default start method is its forkserver's: loader workers
    would be children of a forkserver, and torch's watchdog (which compares ``os.getppid()``
    with the parent it started with) would never see the sweeper worker die. Forked instead, they
    are its children, and the kernel kills each the moment its parent dies (PR_SET_PDEATHSIG)."""
    if count == 0:
        return {"num_workers": 0}
    if not sys.platform.startswith("linux"):
        return {"num_workers": count}
    return {
        "num_workers": count,
        "multiprocessing_context": "fork",
        "worker_init_fn": functools.partial(_die_with, os.getpid()),
    }


def _die_with(parent: int, worker_index: int) -> None:
    die_with_parent(parent=parent)


def _home(states: State) -> torch.device:
    return next(iter(states.values())).device


def _onto(states: State, device: torch.device | None) -> State:
    """Cached states go to the GPU once, not once per batch, when they fit."""
    if device is None or device.type != "cuda":
        return states
    try:
        return {k: to_device(v, device) for k, v in states.items()}
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {k: v.pin_memory() for k, v in states.items()}


class PrefixStates:
    """Where the states entering a block come from, for one runtime: the cache policy.

    Args:
        cache: the frozen-prefix cache; ``None`` runs the frozen prefix on every batch.
        device: the training device (the states are computed there).
        batch_size: examples per batch when computing states.

    Example:
        >>> states = PrefixStates(PrefixCache(None), torch.device("cpu"), batch_size=128)
        >>> source = states.source(model, data, splits.train, cut=4, key={"model": ..., ...})
    """

    def __init__(self, cache: PrefixCache | None, device: torch.device, batch_size: int) -> None:
        self.cache = cache
        self.device = device
        self.batch_size = batch_size
        self._told_uncached = False
        self._bytes_per_example: dict[int, float] = {}

    def source(
        self, model: BlockModel, data: EncodedData, indices: np.ndarray, cut: int, key: dict
    ) -> StateSource:
        """The examples ``indices`` of ``data`` as states entering block ``cut``. ``key`` names
        what the states depend on besides the block (model weights, data, split, dtype)."""
        labels = data.labels[torch.as_tensor(indices)]
        states = self.cached(model, data, indices, cut, key)
        if states is None:
            return StateSource(cut, labels, live=(model, data, indices), device=self.device)
        return StateSource(cut, labels, states=states, device=self.device)

    def cached(
        self, model: BlockModel, data: EncodedData, indices: np.ndarray, cut: int, key: dict
    ) -> State | None:
        """The states from the cache (computed into it first if need be), on the CPU; ``None``
        where they are not cached (they are then computed live, batch by batch)."""
        if not self._cacheable(data) or self._too_big_to_cache(model, data, cut, len(indices)):
            return None

        def compute() -> State:
            # start from the nearest lower block already cached: each block runs once per split
            for lower in range(cut - 1, -1, -1):
                below = self.cache.lookup({**key, "cut": lower})
                if below is not None:
                    return advance_states(model, below, lower, cut, self.batch_size, self.device)
            return compute_states(model, data, indices, cut, self.batch_size, self.device)

        return self.cache.get({**key, "cut": cut}, compute)

    def _too_big_to_cache(self, model: BlockModel, data: EncodedData, cut: int, count: int) -> bool:
        if cut not in self._bytes_per_example:
            probe = compute_states(model, data, [0, 1], cut, 2, self.device)
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

    def _cacheable(self, data: EncodedData) -> bool:
        reason = None
        if self.cache is None:
            reason = "the frozen-prefix cache is off (--no-cache)"
        elif data.random_augmentation:
            reason = f"the preprocessing has a random transform ({data.random_augmentation})"
        if reason and not self._told_uncached:
            log.warning("%s: every batch runs the frozen prefix again", reason)
            self._told_uncached = True
        return reason is None


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
