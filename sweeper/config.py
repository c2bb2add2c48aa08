"""One trial's configuration: the values of the [search] keys that a trial drew, as a plain value.

The search space (search_space.py) draws it from Optuna; the confirmation rebuilds it from a
trial's params; `fit` trains it. Nothing here knows Optuna.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from sweeper.records import METHOD_PARAM, UNFREEZE, Strategy, method_from_params, strategy_for
from sweeper.stages import StagePlan, plan_stages


@dataclass(frozen=True)
class TrialConfig:
    """The parameters of one trial; the names are the [search] keys (and the Optuna and MLflow
    parameter names). The fine-tuning parameters are ``None`` for feature extraction, and each
    method's own (``lora_rank``, ``lora_alpha``, ``lr_decay``) ``None`` unless that method; a
    feature-extraction configuration's method is always "unfreeze".

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
    method: str = UNFREEZE  # the fine-tuning method (sweeper/methods.py)
    lora_rank: int | None = None  # "lora"
    lora_alpha: float | None = None  # "lora"
    lr_decay: float | None = None  # "layer_decay"

    def __post_init__(self) -> None:
        if not self.unfrozen_blocks and self.method != UNFREEZE:
            raise ValueError(f"method {self.method!r} needs unfrozen blocks; feature extraction has none")

    @property
    def strategy(self) -> Strategy:
        return strategy_for(self.unfrozen_blocks)

    def params(self) -> dict[str, float | int | str]:
        """The parameters that are set, by name (a feature-extraction trial has three); the method
        where it is not staged unfreezing (the configurations of earlier versions read alike)."""
        params = {k: v for k, v in asdict(self).items() if v is not None}
        if self.method == UNFREEZE:
            del params[METHOD_PARAM]
        return params

    def plan(self, num_blocks: int) -> StagePlan:
        """The stage plan of this configuration on a backbone of ``num_blocks`` blocks."""
        return plan_stages(
            num_blocks,
            self.unfrozen_blocks,
            self.blocks_per_stage or 1,
            self.head_epochs,
            self.stage_epochs or 1,
            # staged unfreezing adds blocks stage by stage; the other methods train them all at once
            staged=self.method == UNFREEZE,
        )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrialConfig:
        """The configuration of a trial, from its Optuna params (other names are ignored); its
        method from the ``method`` param, or, where [search] gave one, from the method's own params."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in params.items() if k in names}
        return cls(**{**given, METHOD_PARAM: method_from_params(params)})
