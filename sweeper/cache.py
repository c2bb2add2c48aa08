"""The frozen-prefix cache: the states entering a block, for one split, computed once per
(model weights, data, preprocessing, split, block, dtype) and reused across epochs, trials and the
worker processes of a machine.

Entries live on disk, named by a digest of everything they depend on (content-addressed), written
to a temporary file and renamed into place (readers never see half an entry), guarded by a lock
file so that concurrent workers compute each entry once, and evicted least-recently-used past a
size bound. Entries also stay in this process's memory up to a bound.

Each entry carries a checksum of its tensor bytes in its header, checked whenever it is read from
disk: an entry that fails it (or has none: an older format) is logged, deleted and recomputed.
The disk is an optimisation only: where the folder cannot be written (read-only, full, not
creatable), one warning per folder says so and the states are computed in memory; entries already
there are still read.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sweeper.digests import digest

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]  # tensors batched on dim 0, as the backbones pass them

FORMAT_VERSION = 2  # 2: a checksum of the payload in the header
DEFAULT_MAX_BYTES = 20 * 2**30
DEFAULT_MEMORY_BYTES = 3 * 2**30
DEFAULT_MAX_ENTRY_BYTES = 8 * 2**30  # one entry is built in memory: keep it well under RAM
SUFFIX = ".safetensors"
CHECKSUM_KEY = "sweeper.crc32"  # header metadata: CRC-32 of the blocks' CRC-32s (see payload_checksum)
FORMAT_KEY = "sweeper.format"
CHECKSUM_BLOCK = 8 * 2**20
# room for an entry's header and the filesystem's rounding, on top of its tensor bytes
WRITE_HEADROOM = 64 * 2**10

_told_unwritable: set[Path] = set()  # cache folders this process has warned about


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
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._cannot_write(_why(exc))

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
        return self._read(self._path(key))

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}{SUFFIX}"

    def _load_or_compute(self, key: str, compute: Callable[[], State]) -> State:
        if self.directory is None:
            self.misses += 1
            return compute()
        path = self._path(key)
        loaded = self._read(path)
        if loaded is not None:
            self.hits += 1
            return loaded
        with self._entry_lock(path) as writable:
            # another worker may have written it while we waited
            loaded = self._read(path) if writable else None
            if loaded is not None:
                self.hits += 1
                return loaded
            self.misses += 1
            states = compute()
            stored = writable and self._write(path, states)
        if stored:
            self._evict(keep=path)
        return states

    def _read(self, path: Path) -> State | None:
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as entry:
                meta = entry.metadata() or {}
                states = {name: entry.get_tensor(name) for name in entry.keys()}  # noqa: SIM118
        except Exception as exc:  # a corrupt entry is recomputed, never trusted
            return self._discard(path, f"is unreadable ({exc})")
        if meta.get(FORMAT_KEY) != str(FORMAT_VERSION) or CHECKSUM_KEY not in meta:
            return self._discard(path, "has no checksum (an older format)")
        if meta[CHECKSUM_KEY] != payload_checksum(states):
            return self._discard(path, "fails its checksum (its bytes changed on disk)")
        with suppress(OSError):  # recently used: evicted last (a read-only folder is still read)
            os.utime(path)
        return states

    def _discard(self, path: Path, why: str) -> None:
        log.warning("frozen-prefix cache entry %s %s: deleted, recomputing it", path, why)
        with suppress(OSError):  # a read-only folder keeps it; it is never trusted all the same
            path.unlink(missing_ok=True)
        return None

    @contextmanager
    def _entry_lock(self, path: Path) -> Iterator[bool]:
        """Held while an entry is computed and written; yields False (no lock, nothing to be
        written) where the folder cannot be written."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (closed below)
        except OSError as exc:
            self._cannot_write(_why(exc))
            yield False
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, path: Path, states: State) -> bool:
        """Writes the entry; False where the disk cannot take it (the states stay in memory)."""
        size = state_bytes(states)
        try:
            free = shutil.disk_usage(path.parent).free
            if free < size + WRITE_HEADROOM:
                self._cannot_write(f"an entry takes {_size(size)}, {_size(free)} free")
                return False
            _write_atomically(path, states)
        except (OSError, SafetensorError) as exc:
            self._cannot_write(_why(exc))
            return False
        return True

    def _cannot_write(self, why: str) -> None:
        if self.directory in _told_unwritable:
            return
        _told_unwritable.add(self.directory)
        log.warning(
            "frozen-prefix cache folder %s cannot be written (%s): the states are computed in "
            "memory, entries already there are still read. Give --cache-dir a writable folder "
            "with free space, or --no-cache",
            self.directory,
            why,
        )

    def _remember(self, key: str, states: State) -> None:
        size = state_bytes(states)
        if size > self.memory_bytes:
            return
        self._memory[key] = states
        while sum(state_bytes(s) for s in self._memory.values()) > self.memory_bytes:
            self._memory.popitem(last=False)

    def _evict(self, keep: Path) -> None:
        entries = []
        for entry in self.directory.glob(f"*/*{SUFFIX}"):
            with suppress(OSError):  # another worker may evict it first
                entries.append((entry.stat(), entry))
        entries.sort(key=lambda e: e[0].st_mtime)
        total = sum(stat.st_size for stat, _ in entries)
        for stat, entry in entries:
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue
            total -= stat.st_size
            with suppress(OSError):
                entry.unlink(missing_ok=True)
                log.info("frozen-prefix cache: evicted %s", entry.name)


def state_bytes(states: State) -> int:
    return sum(t.element_size() * t.numel() for t in states.values())


def payload_checksum(states: State) -> str:
    """The CRC-32 of the CRC-32s of the tensors' bytes in blocks of 8 MiB (names sorted), as 8
    hex digits. The blocks are summed in threads (zlib lets go of the GIL). It costs about one read
    of the entry's bytes, once per entry per process (bench/cache_checksum.py: 35-60 ms for 124 MiB
    on 2 cores, against 53-60 ms to read the file; BENCHMARKS.md)."""
    blocks = []
    for name in sorted(states):
        data = states[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        blocks += [data[i : i + CHECKSUM_BLOCK] for i in range(0, len(data), CHECKSUM_BLOCK)]
    if len(blocks) > 1:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            crcs = list(pool.map(zlib.crc32, blocks))
    else:
        crcs = [zlib.crc32(b) for b in blocks]
    return f"{zlib.crc32(struct.pack(f'<{len(crcs)}I', *crcs)):08x}"


def _write_atomically(path: Path, states: State) -> None:
    tensors = {k: v.contiguous() for k, v in states.items()}
    metadata = {FORMAT_KEY: str(FORMAT_VERSION), CHECKSUM_KEY: payload_checksum(tensors)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        with suppress(OSError):
            os.unlink(tmp)


def _why(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"
