"""The learning rate within a stage: warmup, then decay; every group keeps its ratio to the head."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sweeper.schedule import StageSchedule, stage_multiplier


@given(total=st.integers(2, 500), warmup=st.floats(0, 0.5), kind=st.sampled_from(["linear", "cosine"]))
def test_the_rate_rises_over_the_warmup_then_falls_and_never_stops_a_step(total, warmup, kind):
    factors = [stage_multiplier(step, total, kind, warmup) for step in range(total)]
    peak = factors.index(max(factors))
    assert max(factors) == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:peak], factors[1 : peak + 1], strict=True))  # warmup rises
    assert all(a >= b for a, b in zip(factors[peak:], factors[peak + 1 :], strict=False))  # then falls
    assert all(f > 0 for f in factors)  # no step is wasted at rate 0
    decay_steps = total - math.ceil(warmup * total)
    if decay_steps > 1:  # the rate ends below its peak, at 1/decay_steps for a linear decay
        assert factors[-1] < 1
        assert kind != "linear" or factors[-1] == pytest.approx(1 / decay_steps)


def test_a_constant_schedule_keeps_the_head_rate():
    assert {stage_multiplier(step, 40, "constant", 0.1) for step in range(40)} == {1.0}


def test_the_schedule_scales_every_group_and_keeps_the_backbone_ratio():
    head, block = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(
        [{"params": head.parameters(), "lr_scale": 1.0}, {"params": block.parameters(), "lr_scale": 0.05}]
    )
    schedule = StageSchedule(optimizer, head_lr=0.01, total_steps=10, kind="linear", warmup=0.2)
    seen = []
    for _ in range(10):
        schedule.before_step()
        seen.append([group["lr"] for group in optimizer.param_groups])
    assert seen[0] == pytest.approx([0.005, 0.00025])  # half-way up the two warmup steps
    assert seen[1] == pytest.approx([0.01, 0.0005])  # the peak: the head's rate
    assert seen[-1] == pytest.approx([0.00125, 0.0000625])  # 1/8 of the peak, at the last step
    assert all(block == pytest.approx(head * 0.05) for head, block in seen)
