"""The method protocol and registry: `Method`, `register_method`, `method_for`, and what a trained
method costs to keep (`trainable_params`, `ship_bytes`)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sweeper.backbones.base import BlockModel
from sweeper.config import TrialConfig
from sweeper.stages import Stage, StagePlan, trained_parts


class Method:
    """One fine-tuning method, for one configuration. Its steps are derived from the plan alone (no
    state carried from one stage to the next), so that a stage can be applied from scratch at any time.
    """

    name: ClassVar[str]

    def __init__(self, config: TrialConfig) -> None:
        self.config = config

    def prepare(self, model: BlockModel, plan: StagePlan) -> None:
        """Change the fresh model before anything trains (adapters); most methods change nothing."""

    def apply_stage(self, model: BlockModel, plan: StagePlan, stage: Stage) -> None:
        """Set ``requires_grad`` and the train/eval mode of every part for this stage."""
        raise NotImplementedError

    def param_groups(self, model: BlockModel, plan: StagePlan) -> list[dict]:
        """Every param group the plan will ever train, created up front, each with its ``lr_scale``."""
        raise NotImplementedError

    def block_weights(self, block: nn.Module) -> list[torch.Tensor]:
        """A trained block's weights as it computes with them, in the pretrained block's order (what
        the forgetting figures compare with the pretrained weights)."""
        return list(block.parameters())

    def shipped(self, model: BlockModel, plan: StagePlan) -> dict[str, torch.Tensor]:
        """What a user of the trained model would ship beside the pretrained weights: the head and
        every part the plan trains (the neck with the top block)."""
        return {
            f"{index}.{name}": tensor
            for index, part in enumerate(trained_parts(model, plan))
            for name, tensor in part.state_dict().items()
        }


METHODS: dict[str, type[Method]] = {}


def register_method(method: type[Method]) -> type[Method]:
    METHODS[method.name] = method
    return method


def trainable_params(model: BlockModel) -> int:
    """The parameters that train now (in the stage last applied), head included."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def ship_bytes(method: Method, model: BlockModel, plan: StagePlan) -> int:
    """The bytes ``torch.save`` writes for what the method ships, counted as they are written
    (not held: a whole fine-tuned encoder is tens of MB)."""
    counted = _ByteCounter()
    torch.save({name: t.detach().cpu() for name, t in method.shipped(model, plan).items()}, counted)
    return counted.nbytes


class _ByteCounter:
    """A file that keeps only the count of the bytes written to it."""

    def __init__(self) -> None:
        self.nbytes = 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self.nbytes += size
        return size

    def flush(self) -> None:
        pass


def method_for(config: TrialConfig) -> Method:
    """The configuration's method (its ``method``), for that configuration."""
    return METHODS[config.method](config)
