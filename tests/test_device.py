"""The device a setting names: auto takes a GPU where there is one; a bad name or a missing GPU
is one message saying what to use."""

from __future__ import annotations

import pytest
import torch

from sweeper.device import autocast, pick_device, to_device
from sweeper.errors import UserError


def test_auto_takes_the_gpu_when_one_is_visible_else_the_cpu():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_a_name_that_is_no_device_is_refused_with_the_names_to_use():
    with pytest.raises(UserError, match="device is 'gpu0'; use auto, cpu, cuda or cuda:N"):
        pick_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        pick_device("cuda:0")


def test_on_the_cpu_nothing_changes_precision_or_layout():
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    images = torch.randn(2, 3, 4, 4)
    assert to_device(images, torch.device("cpu")).is_contiguous()
