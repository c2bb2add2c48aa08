"""The training device: which one a setting names, and what runs differently on a GPU (bf16
autocast, channels_last images)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from sweeper.errors import UserError


def pick_device(name: str) -> torch.device:
    """``auto`` (a GPU where one is visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device is {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device is {name!r}, but no CUDA GPU is visible; use auto or cpu")
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch tensor on the device; images (4-d) channels_last on a GPU, as the model is."""
    tensor = tensor.to(device, non_blocking=True)
    if device.type == "cuda" and tensor.dim() == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor
