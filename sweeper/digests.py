"""Content digests: what the frozen-prefix cache and the study's identity are keyed by."""

from __future__ import annotations

import hashlib
import json

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
