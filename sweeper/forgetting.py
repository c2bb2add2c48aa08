"""How far fine-tuning moved the backbone: relative weight change of each unfrozen block and linear
CKA between the pretrained and the fine-tuned pooled features on the validation split.

Measured at the end of each stage that trains blocks, so a run shows forgetting grow as stages
unfreeze more of the network. The pretrained features are computed once per study runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from sweeper.backbones import BlockModel
from sweeper.runtime import StudyRuntime
from sweeper.similarity import linear_cka, pooled_features, relative_weight_change
from sweeper.stages import StagePlan


class ForgettingMeter:
    """Forgetting figures of one fine-tuned model, against the pretrained one.

    Args:
        runtime: the study runtime (model, data, splits, device, state sources).
        model: the model about to be trained; it must still hold the pretrained weights.
        plan: its stage plan.
        block_weights: a trained block's weights as it computes with them (its method's say:
            LoRA adds each adapter to the weight it adapts); by default its parameters.

    Example:
        >>> meter = ForgettingMeter(runtime, model, plan)   # before training
        >>> train_staged(..., features_at=meter.stage_ends)  # results there carry val_features
        >>> if meter.is_stage_end(result.epoch):
        ...     figures = meter.measure(result.stage, result.val_features)
    """

    def __init__(
        self,
        runtime: StudyRuntime,
        model: BlockModel,
        plan: StagePlan,
        block_weights: Callable[[nn.Module], Sequence[torch.Tensor]] | None = None,
    ) -> None:
        self.runtime = runtime
        self.block_weights = block_weights or (lambda block: list(block.parameters()))
        self.model = model
        self.plan = plan
        self.history: list[dict] = []
        # the last epoch of each stage that trains backbone blocks (stage 0 only trains the head)
        self.stage_ends = frozenset(
            start + stage.epochs - 1
            for start, stage in zip(plan.stage_starts, plan.stages, strict=True)
            if stage.trainable_blocks
        )
        # the pretrained blocks themselves (shared, never trained): what the copies moved from
        self._reference = runtime.pretrained.family.parts(runtime.pretrained.module).blocks
        self._pretrained = runtime.pretrained_features("val")

    def is_stage_end(self, epoch: int) -> bool:
        return epoch in self.stage_ends

    @torch.no_grad()
    def measure(self, stage: int, tuned: torch.Tensor | None = None) -> dict[str, float]:
        """The figures now, as MLflow metrics; also appended to ``history``. ``tuned``: the
        model's pooled validation features, when the evaluation just computed them."""
        if tuned is None:
            source = self.runtime.source(self.model, "val", self.plan.cut)
            tuned = pooled_features(self.model, source, self.runtime.states.batch_size, self.runtime.device)
        changes = {
            str(index): relative_weight_change(
                self.block_weights(self.model.blocks[index]), self._reference[index]
            )
            for index in range(self.plan.cut, self.plan.num_blocks)
        }
        cka = linear_cka(self._pretrained, tuned)
        self.history.append({"stage": stage, "cka": cka, "weight_change": changes})
        metrics = {"forgetting_cka": cka, "weight_change_mean": sum(changes.values()) / len(changes)}
        metrics.update({f"weight_change_block{index}": value for index, value in changes.items()})
        return metrics
