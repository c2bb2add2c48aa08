"""LoRA: adapters on the layers each family offers, only they and the head train (the pretrained
weights bit-identical after training), each at head_lr; rollback restores them; the forgetting
figures see the weights the adapted blocks compute with; a user ships the head and the adapters."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from sweeper.backbones import to_block_model
from sweeper.config import TrialConfig
from sweeper.fit import fit
from sweeper.methods import method_for
from sweeper.methods.lora import lora_targets
from sweeper.param_groups import make_optimizer
from sweeper.rollback import BestWeights
from tests.backbones.test_families import _tiny_vit
from tests.conftest import runtime_for, write_spec

LORA = TrialConfig(2, 0.01, 1, None, 1, 1, method="lora", lora_rank=4, lora_alpha=8.0)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return runtime_for(write_spec(tmp_path_factory.mktemp("lora"), per_class=20))


def test_each_family_offers_its_layers_but_no_depthwise_convolution_nor_attention_s_inner_projections():
    convnext = to_block_model(tvm.convnext_tiny(weights=None), 3)
    targets = lora_targets(convnext.blocks[3], convnext.lora_modules)
    assert "module.0.0" not in targets and "module.0.1" in targets  # the norm; the downsampling conv
    assert (
        "module.1.0.block.3" in targets and "module.1.0.block.0" not in targets
    )  # pointwise yes, depthwise no
    vit = to_block_model(_tiny_vit(), 3)
    assert lora_targets(vit.blocks[0], vit.lora_modules) == ["module.mlp.0", "module.mlp.3"]
    resnet = to_block_model(tvm.resnet18(weights=None), 3)
    assert lora_targets(resnet.blocks[3], resnet.lora_modules)[:2] == ["module.0.conv1", "module.0.conv2"]


def test_only_the_adapters_and_the_head_train_and_the_pretrained_weights_stay_bit_identical(runtime):
    fitted = fit(runtime, LORA, 0)
    model, pretrained = fitted.model, runtime.frozen_model()
    adapted = {k: v for k, v in model.state_dict().items() if "lora_" not in k and not k.startswith("head.")}
    reference = pretrained.state_dict()
    for name, tensor in adapted.items():  # "blocks.5.layer.attention.self.query.base_layer.weight"
        assert torch.equal(tensor, reference[name.replace(".base_layer", "")]), name
    adapters = {k: v for k, v in model.named_parameters() if "lora_" in k}
    assert adapters and all(k.startswith(("blocks.4.", "blocks.5.")) for k in adapters)
    assert any(
        k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in adapters.items()
    )  # they moved
    head = sum(p.numel() for p in model.head.parameters())
    assert fitted.trainable_params == head + sum(v.numel() for v in adapters.values())
    # 6 linear layers per MiniLM layer, rank 4: 4 * (in + out) each
    assert fitted.trainable_params - head == 2 * 4 * (3 * 768 + 768 + (384 + 1536) + (1536 + 384))
    assert fitted.ship_bytes < 4 * fitted.trainable_params + 20_000  # float32 tensors and their names


def test_every_adapter_learns_at_head_lr():
    model = to_block_model(tvm.resnet18(weights=None), 3)
    plan = LORA.plan(4)
    method = method_for(LORA)
    method.prepare(model, plan)
    optimizer = make_optimizer(method.param_groups(model, plan), 0.02, 0.0)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {
        "head": 0.02,
        "block2": 0.02,
        "block3": 0.02,
    }
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert grouped == {id(p) for n, p in model.named_parameters() if "lora_" in n or n.startswith("head.")}


def test_stage_zero_trains_the_head_alone_and_every_later_stage_all_the_adapters_in_eval_mode():
    model = to_block_model(tvm.resnet18(weights=None), 3)
    plan = LORA.plan(4)
    method = method_for(LORA)
    method.prepare(model, plan)
    method.apply_stage(model, plan, plan.stages[0])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    method.apply_stage(model, plan, plan.stages[-1])
    assert all(
        p.requires_grad == ("lora_" in n or n.startswith("head.")) for n, p in model.named_parameters()
    )
    # BatchNorm statistics of the adapted blocks do not move: the base stays the pretrained one
    assert not any(m.training for m in model.blocks.modules() if isinstance(m, nn.BatchNorm2d))


def test_rollback_restores_the_adapters_of_the_best_epoch():
    model = to_block_model(tvm.resnet18(weights=None), 3)
    plan = LORA.plan(4)
    method_for(LORA).prepare(model, plan)
    best = BestWeights(model, plan, "accuracy", maximize=True)
    best.offer(0, {"accuracy": 0.8})
    kept = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.add_(1.0)
    best.end_stage(1, {"accuracy": 0.5})  # ended below the best: rolled back
    assert all(torch.equal(p, kept[n]) for n, p in model.named_parameters() if "lora_" in n)


def test_the_forgetting_figures_see_the_adapted_weights(runtime):
    fitted = fit(runtime, dataclasses.replace(LORA, unfrozen_blocks=1), 0)
    (figures,) = fitted.forgetting
    assert figures["weight_change"]["5"] > 0  # W + (alpha / rank) B A moved from W
    assert 0 < figures["cka"] <= 1 + 1e-6
