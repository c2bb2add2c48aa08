"""Fine-tuning methods: registered by name, picked for a configuration, and deriving each stage
from the plan alone, so that a stage applied from scratch is the stage reached step by step."""

from __future__ import annotations

import torch
from torchvision import models as tvm

from sweeper.backbones import to_block_model
from sweeper.config import TrialConfig
from sweeper.methods import METHODS, StagedUnfreezing, method_for
from sweeper.param_groups import build_param_groups
from sweeper.records import METHOD_NAMES
from sweeper.stages import plan_stages


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
