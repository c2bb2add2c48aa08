"""The stage plan: stage 0 trains the head on a frozen backbone; each later stage unfreezes the next
blocks from the top. `apply_stage` derives every flag from the plan, so resuming mid-plan is safe."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from sweeper.backbones.base import BlockModel


@dataclass(frozen=True)
class Stage:
    index: int
    epochs: int
    trainable_blocks: tuple[int, ...]  # block indices, counted input → output

    @property
    def first_trainable(self) -> int | None:
        return min(self.trainable_blocks) if self.trainable_blocks else None


@dataclass(frozen=True)
class StagePlan:
    num_blocks: int
    unfrozen_blocks: int
    stages: tuple[Stage, ...]

    @property
    def cut(self) -> int:
        """The lowest block this plan ever trains: everything below it is a fixed function."""
        return self.num_blocks - self.unfrozen_blocks

    def entry(self, stage: Stage) -> int:
        """Where the stage's inputs enter: its lowest trainable block, or, for a head-only stage,
        the pooled features (the neck trains with the top block, so here it is frozen too)."""
        return stage.first_trainable if stage.first_trainable is not None else self.num_blocks + 1

    @property
    def total_epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    @property
    def stage_starts(self) -> tuple[int, ...]:
        """The global epoch (0-based, numbered across stages) at which each stage begins."""
        starts, epoch = [], 0
        for stage in self.stages:
            starts.append(epoch)
            epoch += stage.epochs
        return tuple(starts)


def plan_stages(
    num_blocks: int,
    unfrozen_blocks: int,
    blocks_per_stage: int,
    head_epochs: int,
    stage_epochs: int,
    staged: bool = True,
) -> StagePlan:
    """Build the plan; ``unfrozen_blocks = 0`` gives feature extraction (one head-only stage).

    ``staged = False``: the same stages and epochs, but every stage after the first trains all
    ``unfrozen_blocks`` top blocks (methods that train them together: layer decay, LoRA)."""
    if not 0 <= unfrozen_blocks <= num_blocks:
        raise ValueError(f"unfrozen_blocks is {unfrozen_blocks}, but must be in 0..{num_blocks}")
    stages = [Stage(0, head_epochs, ())]
    for k in range(1, math.ceil(unfrozen_blocks / blocks_per_stage) + 1):
        stages.append(
            Stage(
                k,
                stage_epochs,
                _blocks_to_unfreeze(
                    num_blocks, unfrozen_blocks, blocks_per_stage * k if staged else unfrozen_blocks
                ),
            )
        )
    return StagePlan(num_blocks, unfrozen_blocks, tuple(stages))


def _blocks_to_unfreeze(num_blocks: int, unfrozen_blocks: int, count: int) -> tuple[int, ...]:
    count = min(count, unfrozen_blocks)
    return tuple(range(num_blocks - count, num_blocks))


def trained_parts(model: BlockModel, plan: StagePlan) -> list[nn.Module]:
    """Every module the plan may train: the head, the unfrozen blocks, and the neck with the top."""
    parts: list[nn.Module] = [model.head, *model.blocks[plan.cut :]]
    if plan.unfrozen_blocks:
        parts.append(model.neck)
    return parts


def apply_stage(model: BlockModel, plan: StagePlan, stage: Stage) -> None:
    """Set requires_grad and train/eval mode of every part from the plan alone.

    Frozen parts stay in eval mode, so their BatchNorm statistics and dropout do not move.
    """
    _set_trainable(model.stem, False)
    for index, block in enumerate(model.blocks):
        _set_trainable(block, index in stage.trainable_blocks)
    _set_trainable(model.neck, plan.num_blocks - 1 in stage.trainable_blocks)
    _set_trainable(model.head, True)


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    module.train(trainable)
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)
