"""One trial's configuration: the values of the [search] keys that a trial drew, as a plain value.

The search space (search_space.py) draws it from Optuna; the confirmation rebuilds it from a
trial's params; `fit` trains it. Nothing here knows Optuna.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from sweeper.records import Strategy, strategy_for
from sweeper.stages import StagePlan, plan_stages


@dataclass(frozen=True)
class TrialConfig:
    """The parameters of one trial; the names are the [search] keys (and the Optuna and MLflow
    parameter names). The fine-tuning parameters are ``None`` for feature extraction.

    Example:
        >>> config = TrialConfig(unfrozen_blocks=2, head_lr=3e-3, head_epochs=2, lr_ratio=0.05,
        ...                      stage_epochs=1, blocks_per_stage=1)
        >>> config.plan(num_blocks=6).stage_starts
        (0, 2, 3)
    """

    unfrozen_blocks: int
    head_lr: float
    head_epochs: int
    lr_ratio: float | None = None  # only when unfrozen_blocks > 0
    stage_epochs: int | None = None
    blocks_per_stage: int | None = None

    @property
    def strategy(self) -> Strategy:
        return strategy_for(self.unfrozen_blocks)

    def params(self) -> dict[str, float | int]:
        """The parameters that are set, by name (a feature-extraction trial has three)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def plan(self, num_blocks: int) -> StagePlan:
        """The stage plan of this configuration on a backbone of ``num_blocks`` blocks."""
        return plan_stages(
            num_blocks,
            self.unfrozen_blocks,
            self.blocks_per_stage or 1,
            self.head_epochs,
            self.stage_epochs or 1,
        )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrialConfig:
        """The configuration of a trial, from its Optuna params (other names are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})
