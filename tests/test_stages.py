"""The stage plan's contents, and apply_stage deriving flags and modes from the plan alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision import models as tvm

from sweeper.backbones import to_block_model
from sweeper.stages import Stage, apply_stage, plan_stages


def test_feature_extraction_plan_is_one_head_only_stage():
    plan = plan_stages(6, unfrozen_blocks=0, blocks_per_stage=2, head_epochs=3, stage_epochs=2)
    assert plan.stages == (Stage(0, 3, ()),)
    assert plan.cut == 6 and plan.total_epochs == 3


def test_stages_unfreeze_from_the_top_blocks_per_stage_at_a_time():
    plan = plan_stages(6, unfrozen_blocks=5, blocks_per_stage=2, head_epochs=2, stage_epochs=1)
    assert [s.trainable_blocks for s in plan.stages] == [(), (4, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5)]
    assert [s.epochs for s in plan.stages] == [2, 1, 1, 1]
    assert plan.cut == 1  # the lowest block this plan ever trains
    assert plan.stage_starts == (0, 2, 3, 4)  # epochs are numbered across stages
    assert plan.total_epochs == 5
    # head-only stage 0 starts from the pooled features, later stages from their lowest block
    assert [plan.entry(s) for s in plan.stages] == [7, 4, 2, 1]


def test_full_fine_tuning_reaches_every_block():
    plan = plan_stages(4, unfrozen_blocks=4, blocks_per_stage=1, head_epochs=1, stage_epochs=2)
    assert plan.stages[-1].trainable_blocks == (0, 1, 2, 3)
    assert len(plan.stages) == 5 and plan.cut == 0


@st.composite
def _plans(draw):
    blocks = draw(st.integers(1, 24))
    return (
        blocks,
        draw(st.integers(0, blocks)),  # unfrozen
        draw(st.integers(1, blocks)),  # per stage
        draw(st.integers(1, 5)),  # head epochs
        draw(st.integers(1, 5)),  # stage epochs
    )


@given(_plans())
def test_every_plan_unfreezes_from_the_top_and_ends_with_exactly_the_unfrozen_blocks(case):
    blocks, unfrozen, per_stage, head_epochs, stage_epochs = case
    plan = plan_stages(blocks, unfrozen, per_stage, head_epochs, stage_epochs)
    trainable = [set(stage.trainable_blocks) for stage in plan.stages]
    assert trainable[0] == set() and plan.stages[0].epochs == head_epochs  # the head first, alone
    assert trainable[-1] == set(range(blocks - unfrozen, blocks)) and plan.cut == blocks - unfrozen
    for lower, higher in zip(trainable, trainable[1:], strict=False):
        # each stage keeps what the one before trained and adds up to per_stage blocks below it
        assert lower < higher and len(higher - lower) <= per_stage
        assert max(higher - lower) < min(lower, default=blocks)
    assert [s.index for s in plan.stages] == list(range(len(plan.stages)))
    starts = [sum(s.epochs for s in plan.stages[:i]) for i in range(len(plan.stages))]
    assert list(plan.stage_starts) == starts and plan.total_epochs == starts[-1] + plan.stages[-1].epochs
    assert all(plan.entry(s) == min(s.trainable_blocks, default=blocks + 1) for s in plan.stages)


def test_more_unfrozen_blocks_than_the_model_has_is_refused():
    with pytest.raises(ValueError, match="must be in 0..4"):
        plan_stages(4, unfrozen_blocks=5, blocks_per_stage=1, head_epochs=1, stage_epochs=1)


def _bn_modules(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_blocks_keep_batchnorm_in_eval_and_their_statistics_still():
    torch.manual_seed(0)
    model = to_block_model(tvm.resnet18(weights=None), num_classes=2)
    plan = plan_stages(4, unfrozen_blocks=1, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    apply_stage(model, plan, plan.stages[1])  # only layer4 trains
    frozen_stats = [m.running_mean.clone() for m in _bn_modules(model.blocks[2])]
    trained_stats = [m.running_mean.clone() for m in _bn_modules(model.blocks[3])]
    assert all(not m.training for m in _bn_modules(model.stem) + _bn_modules(model.blocks[0]))
    assert all(m.training for m in _bn_modules(model.blocks[3]))

    model({"pixel_values": torch.randn(4, 3, 32, 32) * 3 + 1})

    for before, m in zip(frozen_stats, _bn_modules(model.blocks[2]), strict=True):
        assert torch.equal(before, m.running_mean)
    assert any(
        not torch.equal(b, m.running_mean)
        for b, m in zip(trained_stats, _bn_modules(model.blocks[3]), strict=True)
    )


def test_apply_stage_is_the_same_from_scratch_as_after_earlier_stages():
    # resuming at stage 2 must not depend on having run stages 0 and 1 in this process
    plan = plan_stages(4, unfrozen_blocks=3, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    walked = to_block_model(tvm.resnet18(weights=None), num_classes=2)
    for stage in plan.stages[:3]:
        apply_stage(walked, plan, stage)
    fresh = to_block_model(tvm.resnet18(weights=None), num_classes=2)
    apply_stage(fresh, plan, plan.stages[2])

    def flags(model):
        return [(n, p.requires_grad) for n, p in model.named_parameters()], [
            (n, m.training) for n, m in model.named_modules()
        ]

    assert flags(walked) == flags(fresh)
