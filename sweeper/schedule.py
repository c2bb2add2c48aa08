"""The learning rate within a stage: a short linear warmup, then a decay to zero at the stage's end.

Each stage restarts the schedule, because each stage starts a new problem: the head alone first,
then newly unfrozen blocks whose first steps should be small. The schedule scales the head's rate;
every group keeps its ``lr_scale`` (the backbone/head ratio stays one number on the group), so
`param_groups.set_learning_rate` is still the one place a rate is set.

Example (10 steps, 20% warmup, linear decay):
    >>> [round(stage_multiplier(step, 10, "linear", 0.2), 3) for step in range(10)]
    [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
"""

from __future__ import annotations

import math

import torch

from sweeper.param_groups import set_learning_rate


def stage_multiplier(step: int, total_steps: int, kind: str, warmup: float) -> float:
    """The factor on the head's rate at ``step`` (0-based) of a stage of ``total_steps`` steps.

    Warmup rises linearly to 1 over the first ``ceil(warmup * total_steps)`` steps (the first step
    already moves: 1/warmup_steps); then "linear" falls towards 0 (the last step at
    1/decay_steps, none wasted at 0), "cosine" along a half cosine; "constant" is 1 throughout
    (no warmup either).
    """
    if kind == "constant" or total_steps <= 1:
        return 1.0
    warm = math.ceil(warmup * total_steps)
    if step < warm:
        return (step + 1) / warm
    decaying = total_steps - warm
    progress = (step - warm) / decaying
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class StageSchedule:
    """Sets the optimizer's rates before each step of one stage."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, head_lr: float, total_steps: int, kind: str, warmup: float
    ):
        self.optimizer = optimizer
        self.head_lr = head_lr
        self.total_steps = total_steps
        self.kind = kind
        self.warmup = warmup
        self.step = 0

    def before_step(self) -> None:
        factor = stage_multiplier(self.step, self.total_steps, self.kind, self.warmup)
        set_learning_rate(self.optimizer, self.head_lr * factor)
        self.step += 1
