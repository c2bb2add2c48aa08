"""LR per param group: head at head_lr, every block the plan will train at head_lr * lr_ratio."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from sweeper.backbones import to_block_model
from sweeper.param_groups import build_param_groups, make_optimizer, set_learning_rate
from sweeper.stages import apply_stage, plan_stages


@pytest.fixture
def model():
    torch.manual_seed(0)
    return to_block_model(tvm.resnet18(weights=None), num_classes=3)


def test_groups_exist_from_the_start_with_scaled_learning_rates(model):
    plan = plan_stages(4, unfrozen_blocks=2, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    optimizer = make_optimizer(build_param_groups(model, plan, 0.05), 1e-2, 0.0)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert set(by_name) == {"head", "block2", "block3"}  # blocks 0–1 are never trained
    assert by_name["head"]["lr"] == pytest.approx(1e-2)
    assert by_name["block2"]["lr"] == pytest.approx(5e-4)
    assert by_name["block3"]["lr"] == pytest.approx(5e-4)


def test_the_neck_trains_with_the_top_block(model):
    from torchvision.models import convnext_tiny

    convnext = to_block_model(convnext_tiny(weights=None), num_classes=3)
    plan = plan_stages(4, unfrozen_blocks=1, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    optimizer = make_optimizer(build_param_groups(convnext, plan, 0.1), 1e-2, 0.0)
    top = next(g for g in optimizer.param_groups if g["name"] == "block3")
    neck = {id(p) for p in convnext.neck.parameters()}
    assert neck and neck <= {id(p) for p in top["params"]}


def test_changing_the_head_lr_rescales_every_group(model):
    plan = plan_stages(4, unfrozen_blocks=1, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    optimizer = make_optimizer(build_param_groups(model, plan, 0.1), 1e-2, 0.0)
    set_learning_rate(optimizer, 2e-3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-3, 2e-4])


def test_lr_ratio_sets_the_size_of_the_backbone_step(model):
    # Adam's first step moves each weight by about its lr: the ratio shows in the step sizes
    plan = plan_stages(4, unfrozen_blocks=1, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    optimizer = make_optimizer(build_param_groups(model, plan, 0.01), 1e-2, 0.0)
    apply_stage(model, plan, plan.stages[1])
    head_before = model.head.weight.detach().clone()
    block_before = model.blocks[3].module[1].conv2.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(
        model({"pixel_values": torch.randn(4, 3, 32, 32)}), torch.tensor([0, 1, 2, 0])
    )
    loss.backward()
    optimizer.step()
    head_step = (model.head.weight - head_before).abs().max().item()
    block_step = (model.blocks[3].module[1].conv2.weight - block_before).abs().max().item()
    assert head_step == pytest.approx(1e-2, rel=0.05)
    assert block_step == pytest.approx(1e-4, rel=0.05)


def test_frozen_blocks_do_not_move_in_a_stage_that_does_not_train_them(model):
    plan = plan_stages(4, unfrozen_blocks=2, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    optimizer = make_optimizer(build_param_groups(model, plan, 0.1), 1e-2, 0.01)
    apply_stage(model, plan, plan.stages[1])  # block 3 trains, block 2 waits its turn
    waiting = model.blocks[2].module[0].conv1.weight.detach().clone()
    model.train(False)
    apply_stage(model, plan, plan.stages[1])
    loss = model({"pixel_values": torch.randn(4, 3, 32, 32)}).sum()
    loss.backward()
    optimizer.step()
    assert torch.equal(waiting, model.blocks[2].module[0].conv1.weight)
