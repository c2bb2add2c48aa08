"""LoRA (Hu et al., 2021): low-rank adapters beside the top blocks' layers; the pretrained weights
never move.

peft's `inject_adapter_in_model` wraps each targeted layer of each adapted block (the block copies
this run owns, never the shared pretrained ones) in a layer that adds ``(alpha / rank) * B A x``,
``B`` starting at zero: the adapted model starts as the pretrained one. Which layers a block offers
is its family's say (`Family.lora_modules`: linear layers, and convolutions for CNN families);
grouped (depthwise) convolutions and the projections inside `nn.MultiheadAttention` (which calls
their weights directly, not the modules) are left alone.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from sweeper.backbones.base import BlockModel
from sweeper.methods.base import Method, register_method
from sweeper.records import LORA
from sweeper.stages import Stage, StagePlan

ADAPTER = "default"  # peft's name for the one adapter of each layer


def is_adapter(name: str) -> bool:
    """Whether a parameter (by its name in the model) belongs to an adapter."""
    return "lora_" in name


def lora_targets(block: nn.Module, kinds: tuple[type[nn.Module], ...]) -> list[str]:
    """The names, inside ``block``, of the layers LoRA adapts."""
    attention = [name for name, m in block.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return [
        name
        for name, module in block.named_modules()
        if isinstance(module, kinds)
        and getattr(module, "groups", 1) == 1
        and not any(name.startswith(f"{outer}.") for outer in attention)
    ]


@register_method
class LoRA(Method):
    """Stage 0 trains the head alone; from the first fine-tuning stage the adapters of every one of
    the top ``unfrozen_blocks`` blocks train (the plan is not staged), at ``head_lr`` (they are new
    weights, like the head). Everything pretrained stays frozen and in eval mode (BatchNorm
    statistics and dropout included), so a user ships the head and the adapters."""

    name = LORA

    def prepare(self, model: BlockModel, plan: StagePlan) -> None:
        config = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha, lora_dropout=0.0)
        for index in range(plan.cut, plan.num_blocks):
            targets = lora_targets(model.blocks[index], model.lora_modules)
            if targets:
                config.target_modules = targets
                inject_adapter_in_model(config, model.blocks[index], adapter_name=ADAPTER)

    def apply_stage(self, model: BlockModel, plan: StagePlan, stage: Stage) -> None:
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in self._adapters(model, stage.trainable_blocks):
            parameter.requires_grad_(True)
        model.head.train()
        model.head.requires_grad_(True)

    def param_groups(self, model: BlockModel, plan: StagePlan) -> list[dict]:
        groups = [{"name": "head", "params": list(model.head.parameters()), "lr_scale": 1.0}]
        for index in range(plan.cut, plan.num_blocks):
            params = self._adapters(model, (index,))
            if params:
                groups.append({"name": f"block{index}", "params": params, "lr_scale": 1.0})
        return groups

    def shipped(self, model: BlockModel, plan: StagePlan) -> dict[str, torch.Tensor]:
        """The head and the adapters."""
        head = {f"head.{name}": tensor for name, tensor in model.head.state_dict().items()}
        return head | {name: tensor for name, tensor in model.state_dict().items() if is_adapter(name)}

    def block_weights(self, block: nn.Module) -> list[torch.Tensor]:
        """The block's weights as the adapted block computes with them: each adapted layer's
        pretrained weight plus its adapter's ``(alpha / rank) * B A``, in the pretrained order."""
        merged = {
            id(layer.get_base_layer().weight): layer.get_base_layer().weight + layer.get_delta_weight(ADAPTER)
            for layer in block.modules()
            if isinstance(layer, LoraLayer) and ADAPTER in layer.lora_A
        }
        return [merged.get(id(p), p) for name, p in block.named_parameters() if not is_adapter(name)]

    @staticmethod
    def _adapters(model: BlockModel, indices) -> list[nn.Parameter]:
        return [p for i in indices for name, p in model.blocks[i].named_parameters() if is_adapter(name)]
