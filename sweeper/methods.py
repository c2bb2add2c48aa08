"""Fine-tuning methods: how the backbone trains once a stage unfreezes part of it.

A method decides two things, and nothing else in the training path does: which parameters train
in each stage (and which parts are in train mode), and the optimizer's param groups with their
``lr_scale`` (the one place a scale turns into a learning rate is `param_groups.set_learning_rate`).
`fit` picks the method of a configuration; `train_staged` calls it at the start of each stage.
A new method (LoRA adapters, layer-wise learning-rate decay) is one subclass registered here.
"""

from __future__ import annotations

from typing import ClassVar

from sweeper.backbones.base import BlockModel
from sweeper.config import TrialConfig
from sweeper.param_groups import build_param_groups
from sweeper.stages import Stage, StagePlan, apply_stage


class Method:
    """One fine-tuning method. Both steps are derived from the plan alone (no state carried from
    one stage to the next), so that a stage can be applied from scratch at any time."""

    name: ClassVar[str]

    def apply_stage(self, model: BlockModel, plan: StagePlan, stage: Stage) -> None:
        """Set ``requires_grad`` and the train/eval mode of every part for this stage."""
        raise NotImplementedError

    def param_groups(self, model: BlockModel, plan: StagePlan, lr_ratio: float | None) -> list[dict]:
        """Every param group the plan will ever train, created up front, each with its ``lr_scale``."""
        raise NotImplementedError


METHODS: dict[str, Method] = {}


def register_method(method: type[Method]) -> type[Method]:
    METHODS[method.name] = method()
    return method


@register_method
class StagedUnfreezing(Method):
    """The recipe: stage 0 trains the new head on the frozen backbone; each later stage unfreezes
    the next blocks from the top, every unfrozen block at ``head_lr * lr_ratio``."""

    name = "unfreeze"

    def apply_stage(self, model: BlockModel, plan: StagePlan, stage: Stage) -> None:
        apply_stage(model, plan, stage)

    def param_groups(self, model: BlockModel, plan: StagePlan, lr_ratio: float | None) -> list[dict]:
        return build_param_groups(model, plan, lr_ratio)


def method_for(config: TrialConfig) -> Method:
    """The configuration's method (staged unfreezing, the one method so far)."""
    return METHODS[StagedUnfreezing.name]
