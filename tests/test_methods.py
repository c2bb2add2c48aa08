"""Fine-tuning methods: registered by name, picked for a configuration, and deriving each stage
from the plan alone, so that a stage applied from scratch is the stage reached step by step."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from sweeper.backbones import to_block_model
from sweeper.config import TrialConfig
from sweeper.methods import METHODS, StagedUnfreezing, method_for
from sweeper.methods.base import ship_bytes
from sweeper.param_groups import build_param_groups, make_optimizer
from sweeper.records import METHOD_NAMES
from sweeper.stages import plan_stages
from tests.backbones.test_families import CASES, _inputs


def _flags(model) -> list[tuple[bool, bool]]:
    return [(p.requires_grad, m.training) for m in model.modules() for p in m.parameters(recurse=False)]


def test_staged_unfreezing_is_registered_and_picked_for_every_configuration():
    assert METHODS["unfreeze"] is StagedUnfreezing
    assert isinstance(method_for(TrialConfig(2, 0.01, 1, 0.1, 1, 1)), StagedUnfreezing)
    assert isinstance(method_for(TrialConfig(0, 0.01, 1)), StagedUnfreezing)  # feature extraction


def test_every_method_a_spec_may_name_is_registered():
    assert set(METHODS) == set(METHOD_NAMES)


def test_each_method_derives_a_stage_from_the_plan_alone():
    plan = plan_stages(4, unfrozen_blocks=3, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    config = TrialConfig(3, 0.01, 1, 0.1, 1, 1)
    for method in (cls(config) for cls in METHODS.values()):
        walked, fresh = (
            to_block_model(tvm.resnet18(weights=None), 3),
            to_block_model(tvm.resnet18(weights=None), 3),
        )
        for stage in plan.stages:
            method.apply_stage(walked, plan, stage)
        method.apply_stage(fresh, plan, plan.stages[-1])
        assert _flags(walked) == _flags(fresh), method.name


def test_staged_unfreezing_groups_every_block_the_plan_trains_from_the_start():
    model = to_block_model(tvm.resnet18(weights=None), 3)
    plan = plan_stages(4, unfrozen_blocks=2, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    groups = METHODS["unfreeze"](TrialConfig(2, 0.01, 1, 0.1, 1, 1)).param_groups(model, plan)
    assert [g["name"] for g in groups] == [g["name"] for g in build_param_groups(model, plan, 0.1)]
    assert [(g["name"], g["lr_scale"]) for g in groups] == [("head", 1.0), ("block2", 0.1), ("block3", 0.1)]
    assert torch.is_tensor(groups[0]["params"][0])


UNFREEZE_2 = TrialConfig(2, 0.01, 1, lr_ratio=0.1, stage_epochs=1, blocks_per_stage=1)
LORA_2 = TrialConfig(2, 0.01, 1, None, 1, 1, method="lora", lora_rank=2, lora_alpha=4.0)
LAYER_DECAY_2 = TrialConfig(2, 0.01, 1, 0.1, 1, 1, method="layer_decay", lr_decay=0.8)
LAYER_DECAY = TrialConfig(
    3, 0.01, 1, lr_ratio=0.1, stage_epochs=1, blocks_per_stage=1, method="layer_decay", lr_decay=0.5
)


def test_layer_decay_trains_the_head_alone_then_every_planned_block_from_the_first_fine_tuning_stage():
    model = to_block_model(tvm.resnet18(weights=None), 3)
    plan = LAYER_DECAY.plan(4)
    assert [stage.trainable_blocks for stage in plan.stages] == [(), (1, 2, 3), (1, 2, 3), (1, 2, 3)]
    assert plan.stage_starts == TrialConfig(3, 0.01, 1, 0.1, 1, 1).plan(4).stage_starts  # unfreeze's epochs
    method = method_for(LAYER_DECAY)
    method.apply_stage(model, plan, plan.stages[0])
    assert _trainable(model) == {id(p) for p in model.head.parameters()}
    method.apply_stage(model, plan, plan.stages[1])
    expected = [model.head, model.neck, *model.blocks[1:]]
    assert _trainable(model) == {id(p) for part in expected for p in part.parameters()}
    assert not any(p.requires_grad for part in (model.stem, model.blocks[0]) for p in part.parameters())


def test_layer_decay_sets_each_block_s_rate_from_the_top_down_through_lr_scale():
    model = to_block_model(tvm.resnet18(weights=None), 3)
    plan = LAYER_DECAY.plan(4)
    optimizer = make_optimizer(method_for(LAYER_DECAY).param_groups(model, plan), 0.01, 0.0)
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    # head_lr; then head_lr * lr_ratio * lr_decay^(top - i) for block i, top = 3
    assert rates == pytest.approx({"head": 0.01, "block3": 1e-3, "block2": 5e-4, "block1": 2.5e-4})
    owners = {id(p): group["name"] for group in optimizer.param_groups for p in group["params"]}
    assert all(owners[id(p)] == "block3" for p in model.neck.parameters())  # the neck with the top
    unfreeze = method_for(TrialConfig(3, 0.01, 1, 0.1, 1, 1)).param_groups(model, plan)
    assert {g["name"]: g["lr_scale"] for g in unfreeze} == {
        "head": 1.0,
        "block1": 0.1,
        "block2": 0.1,
        "block3": 0.1,
    }


def _trainable(model) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("case", list(CASES), ids=str)
@pytest.mark.parametrize("config", [UNFREEZE_2, LAYER_DECAY_2, LORA_2], ids=lambda c: c.method)
def test_one_training_step_of_each_method_moves_exactly_what_it_trains_in_every_family(case, config):
    build, _, blocks, kind = CASES[case]
    torch.manual_seed(0)
    model = to_block_model(build(), num_classes=3)
    plan = config.plan(blocks)
    method = method_for(config)
    method.prepare(model, plan)
    optimizer = make_optimizer(method.param_groups(model, plan), 1e-2, 0.0)
    method.apply_stage(model, plan, plan.stages[-1])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    inputs = _inputs(kind)
    logits = model.forward_from(model.prefix(inputs, plan.cut), plan.cut, first_trainable=plan.cut)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert moved <= trainable and any(name.startswith("head.") for name in moved)
    for index in range(plan.cut, blocks):  # every block the last stage trains moved
        assert any(name.startswith(f"blocks.{index}.") for name in moved), index
    assert not any(name.startswith(("stem.", f"blocks.{plan.cut - 1}.")) for name in trainable)
    if config.method == "lora":  # the adapters and the head, nothing pretrained
        assert trainable == {n for n, _ in model.named_parameters() if "lora_" in n or n.startswith("head.")}


def test_ship_bytes_is_the_size_of_the_file_torch_save_writes_for_what_the_method_ships(tmp_path):
    plan = plan_stages(4, unfrozen_blocks=2, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    config = TrialConfig(2, 0.01, 1, 0.1, 1, 1)
    for method in (cls(config) for cls in METHODS.values()):
        model = to_block_model(tvm.resnet18(weights=None), 3)
        method.apply_stage(model, plan, plan.stages[-1])
        # each record of torch.save's zip carries the file's stem; a buffer's is "archive"
        (tmp_path / method.name).mkdir()
        path = tmp_path / method.name / "archive.pt"
        torch.save({name: t.detach().cpu() for name, t in method.shipped(model, plan).items()}, path)
        assert ship_bytes(method, model, plan) == path.stat().st_size, method.name
