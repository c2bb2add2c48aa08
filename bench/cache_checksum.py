"""What the frozen-prefix cache's checksum costs next to reading an entry from disk.

An entry the size of the default study's largest (5,254 training words × 16 tokens × 384 floats,
about 125 MiB) is written once; then, best of 5 each: reading the file (its bytes into memory),
the checksum of its tensors alone (`payload_checksum`, the blocks' CRC-32s summed in threads),
and the cache's whole read (open, map, check) through a fresh `PrefixCache.lookup`.

    python bench/cache_checksum.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from sweeper.cache import PrefixCache, payload_checksum


def best_of(fn, times: int = 5) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    states = {"hidden": torch.randn(5254, 16, 384), "mask": torch.ones(5254, 16, dtype=torch.int64)}
    with tempfile.TemporaryDirectory() as folder:
        PrefixCache(Path(folder)).get({"bench": 1}, lambda: states)
        entry = next(Path(folder).glob("*/*.safetensors"))
        mib = entry.stat().st_size / 2**20
        read = best_of(entry.read_bytes)
        checksum = best_of(lambda: payload_checksum(states))
        lookup = best_of(lambda: PrefixCache(Path(folder), memory_bytes=0).lookup({"bench": 1}))
    print(f"entry {mib:.0f} MiB on {os.cpu_count()} cores")
    print(f"read the file: {read * 1000:.0f} ms ({mib / 1024 / read:.1f} GiB/s)")
    print(f"checksum: {checksum * 1000:.0f} ms ({mib / 1024 / checksum:.1f} GiB/s)")
    print(f"cache read, checked: {lookup * 1000:.0f} ms")


if __name__ == "__main__":
    main()
