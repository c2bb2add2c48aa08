"""The methods that train the backbone's own weights: staged unfreezing and layer-wise decay."""

from __future__ import annotations

from sweeper.backbones.base import BlockModel
from sweeper.methods.base import Method, register_method
from sweeper.param_groups import build_param_groups
from sweeper.records import LAYER_DECAY, UNFREEZE
from sweeper.stages import Stage, StagePlan, apply_stage


@register_method
class StagedUnfreezing(Method):
    """The recipe: stage 0 trains the new head on the frozen backbone; each later stage unfreezes
    the next blocks from the top, every unfrozen block at ``head_lr * lr_ratio``."""

    name = UNFREEZE

    def apply_stage(self, model: BlockModel, plan: StagePlan, stage: Stage) -> None:
        apply_stage(model, plan, stage)

    def param_groups(self, model: BlockModel, plan: StagePlan) -> list[dict]:
        return build_param_groups(model, plan, self.config.lr_ratio)


@register_method
class LayerDecay(Method):
    """Layer-wise learning-rate decay: stage 0 trains the head alone; from the first fine-tuning
    stage every block of the top ``unfrozen_blocks`` trains (the plan is not staged), block i at
    ``head_lr * lr_ratio * lr_decay^(top - i)``: the top block at ``head_lr * lr_ratio``, each block
    below it ``lr_decay`` times slower (the neck with the top block)."""

    name = LAYER_DECAY

    def apply_stage(self, model: BlockModel, plan: StagePlan, stage: Stage) -> None:
        apply_stage(model, plan, stage)

    def param_groups(self, model: BlockModel, plan: StagePlan) -> list[dict]:
        return build_param_groups(model, plan, self.config.lr_ratio, self.config.lr_decay or 1.0)
