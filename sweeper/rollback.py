"""Best-epoch weights and stage rollback.

A run keeps, in memory, the weights of what it trains (the head, the blocks the plan unfreezes and
the neck with the top block; never the frozen prefix, which no run changes) as they were at its
best validation epoch so far. When a stage ends below that best, its weights are put back before
the next stage starts: the stage is rolled back. So the run's model, and its value, are those of
its best epoch, and the head-only stage 0 is a floor: a fine-tuning run cannot end worse on
validation than its own feature-extraction stage.

Only weights (and buffers, such as BatchNorm statistics) are restored; the optimizer keeps its
moments, and the next stage starts its own learning-rate schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sweeper.backbones.base import BlockModel
from sweeper.stages import StagePlan, trained_parts

KEPT, ROLLED_BACK = "kept", "rolled_back"


@dataclass(frozen=True)
class StageOutcome:
    """What became of one stage: kept (it ended at the best so far) or rolled back to ``best_epoch``."""

    stage: int
    outcome: str  # KEPT | ROLLED_BACK
    end_value: float  # the metric after the stage's last epoch
    best_value: float  # the best so far, which the model holds after the stage
    best_epoch: int

    def as_record(self) -> dict:
        return {
            "stage": self.stage,
            "outcome": self.outcome,
            "end_value": self.end_value,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
        }


class BestWeights:
    """The best epoch so far by one validation metric, and its weights."""

    def __init__(self, model: BlockModel, plan: StagePlan, metric: str, maximize: bool) -> None:
        self.parts = trained_parts(model, plan)
        self.metric = metric
        self.maximize = maximize
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self._weights: list[dict[str, torch.Tensor]] = []

    def better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.maximize else value < self.best_value

    def offer(self, epoch: int, val: dict[str, float]) -> None:
        """After an epoch: keep its weights when it is the best so far (ties keep the earlier)."""
        value = val[self.metric]
        if self.better(value):
            self.best_value, self.best_epoch = value, epoch
            self._weights = [_copy(part.state_dict()) for part in self.parts]

    def end_stage(self, stage: int, val: dict[str, float]) -> StageOutcome:
        """At a stage's end (``val`` its last epoch): roll back to the best when it ended below."""
        value = val[self.metric]
        assert self.best_value is not None and self.best_epoch is not None
        rolled_back = value != self.best_value and not self.better(value)
        if rolled_back:
            self.restore()
        return StageOutcome(
            stage, ROLLED_BACK if rolled_back else KEPT, value, self.best_value, self.best_epoch
        )

    @torch.no_grad()
    def restore(self) -> None:
        for part, weights in zip(self.parts, self._weights, strict=True):
            part.load_state_dict(weights)


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in state.items()}
