"""The frozen-prefix cache: the states entering a block, for one split, computed once per
(model weights, data, preprocessing, split, block, dtype) and reused across epochs, trials and the
worker processes of a machine.

Entries live on disk, named by a digest of everything they depend on (content-addressed), written
to a temporary file and renamed into place (readers never see half an entry), guarded by a lock
file so that concurrent workers compute each entry once, and evicted least-recently-used past a
size bound. Entries also stay in this process's memory up to a bound.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sweeper.digests import digest

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]  # tensors batched on dim 0, as the backbones pass them

FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 20 * 2**30
DEFAULT_MEMORY_BYTES = 3 * 2**30
DEFAULT_MAX_ENTRY_BYTES = 8 * 2**30  # one entry is built in memory: keep it well under RAM
SUFFIX = ".safetensors"


class PrefixCache:
    """States of the frozen prefix, on disk (``directory``) and in memory.

    Args:
        directory: where entries live; ``None`` keeps them in this process's memory only.
        max_bytes: the disk bound; past it the least recently used entries go.
        memory_bytes: how much this process keeps loaded.
        max_entry_bytes: larger entries are not cached (their stage computes the prefix per batch).

    Example:
        >>> cache = PrefixCache(Path("~/.cache/sweeper").expanduser())
        >>> states = cache.get({"model": "...", "cut": 4}, lambda: compute_states(...))
    """

    def __init__(
        self,
        directory: Path | None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._memory: OrderedDict[str, State] = OrderedDict()
        self.hits = self.misses = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def get(self, key_parts: dict, compute: Callable[[], State]) -> State:
        """The entry for ``key_parts``: from memory, from disk, or computed (once per machine)."""
        key = digest({"format": FORMAT_VERSION, **key_parts})
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        states = self._load_or_compute(key, compute)
        self._remember(key, states)
        return states

    def lookup(self, key_parts: dict) -> State | None:
        """The entry if memory or disk already holds it; never computes."""
        key = digest({"format": FORMAT_VERSION, **key_parts})
        if key in self._memory:
            return self._memory[key]
        if self.directory is None:
            return None
        return self._read(self.directory / key[:2] / f"{key}{SUFFIX}")

    def _load_or_compute(self, key: str, compute: Callable[[], State]) -> State:
        if self.directory is None:
            self.misses += 1
            return compute()
        path = self.directory / key[:2] / f"{key}{SUFFIX}"
        loaded = self._read(path)
        if loaded is not None:
            self.hits += 1
            return loaded
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_suffix(".lock")):
            loaded = self._read(path)  # another worker may have written it while we waited
            if loaded is not None:
                self.hits += 1
                return loaded
            self.misses += 1
            states = compute()
            _write_atomically(path, states)
        self._evict(keep=path)
        return states

    def _read(self, path: Path) -> State | None:
        if not path.is_file():
            return None
        try:
            states = load_file(str(path))
        except Exception as exc:  # a corrupt entry is recomputed, never trusted
            log.warning("frozen-prefix cache entry %s is unreadable (%s); recomputing", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: evicted last
        return states

    def _remember(self, key: str, states: State) -> None:
        size = state_bytes(states)
        if size > self.memory_bytes:
            return
        self._memory[key] = states
        while sum(state_bytes(s) for s in self._memory.values()) > self.memory_bytes:
            self._memory.popitem(last=False)

    def _evict(self, keep: Path) -> None:
        entries = sorted(self.directory.glob(f"*/*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue
            total -= entry.stat().st_size
            entry.unlink(missing_ok=True)
            log.info("frozen-prefix cache: evicted %s", entry.name)


def state_bytes(states: State) -> int:
    return sum(t.element_size() * t.numel() for t in states.values())


def _write_atomically(path: Path, states: State) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in states.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
