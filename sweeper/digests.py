"""Content digests: what the frozen-prefix cache and the study's identity are keyed by."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def digest(parts: dict) -> str:
    """A digest of JSON-able parts (keys sorted, so that their order does not matter)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of tensor contents (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:40]


def file_digest(path: str | Path) -> str:
    """A digest of a file's bytes (not its name or times)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:40]


def files_digests(paths: list[str]) -> list[str]:
    """`file_digest` of each file, in order, read in a thread pool (hashing releases the GIL)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(file_digest, paths, chunksize=64))


def sequence_digest(header: dict, items: Iterable[str | bytes]) -> str:
    """A digest of JSON-able ``header`` and of ``items`` in order (each length-prefixed, so that
    no two sequences of items read as the same bytes)."""
    h = hashlib.sha256(digest(header).encode())
    for item in items:
        data = item.encode() if isinstance(item, str) else item
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:40]
