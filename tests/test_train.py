"""The staged training loop on a tiny real model: every stage of the plan, epochs numbered across
stages, the stage's modes restored after each evaluation, a non-finite loss stopped at the epoch's
end, the pooled features handed over where asked, and macro-F1 by its definition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sweeper.backbones.base import BlockModel, ImageStem, TensorBlock
from sweeper.config import TrialConfig
from sweeper.methods import StagedUnfreezing
from sweeper.param_groups import build_param_groups, make_optimizer
from sweeper.similarity import pooled_features
from sweeper.stages import plan_stages
from sweeper.states import StateSource
from sweeper.train import NonFiniteLossError, TrainSettings, macro_f1, train_staged


class _Pool(nn.Module):
    def forward(self, state):
        return state["x"].mean(dim=(2, 3))


def _model() -> BlockModel:
    torch.manual_seed(0)
    blocks = [
        TensorBlock(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()))
        for _ in range(3)
    ]
    return BlockModel(ImageStem(nn.Conv2d(3, 4, 3, padding=1)), blocks, _Pool(), feature_dim=4, num_classes=3)


def _sources(model: BlockModel, start: int) -> tuple[StateSource, StateSource]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(48, 3, 8, 8, generator=generator)
    labels = torch.arange(48) % 3
    with torch.no_grad():
        states = model.prefix({"pixel_values": images}, start)
    return StateSource(start, labels[:32], {k: v[:32] for k, v in states.items()}), StateSource(
        start, labels[32:], {k: v[32:] for k, v in states.items()}
    )


_CONFIG = TrialConfig(1, 0.01, 1, 0.1, 1, 1)


def _staged(
    model, plan, head_lr=0.01, on_epoch=lambda result: None, features_at=frozenset(), method=None, **settings
):
    optimizer = make_optimizer(build_param_groups(model, plan, 0.1), head_lr, 0.0)
    return train_staged(
        model,
        plan,
        optimizer,
        head_lr,
        lambda start: _sources(model, start),
        TrainSettings(batch_size=8, **settings),
        on_epoch,
        features_at,
        method=method or StagedUnfreezing(_CONFIG),
    )


def _train(model, plan, head_lr=0.01, on_epoch=lambda result: None, features_at=frozenset()):
    return _staged(model, plan, head_lr, on_epoch, features_at).epochs


class _WreckingStageOne(StagedUnfreezing):
    """Staged unfreezing that fills the top block with noise as stage 1 starts: a stage that
    certainly lowers validation."""

    def apply_stage(self, model, plan, stage):
        super().apply_stage(model, plan, stage)
        if stage.index == 1 and not getattr(self, "wrecked", False):
            self.wrecked = True
            with torch.no_grad():
                for parameter in model.blocks[-1].parameters():
                    parameter.normal_(0, 30)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_every_stage_runs_with_epochs_numbered_across_stages():
    model = _model()
    plan = plan_stages(3, 2, 1, head_epochs=2, stage_epochs=1)
    results = _train(model, plan)
    assert [(r.epoch, r.stage) for r in results] == [(0, 0), (1, 0), (2, 1), (3, 2)]
    assert all(
        {"loss", "accuracy"} <= r.train.keys() and {"loss", "accuracy", "macro_f1"} <= r.val.keys()
        for r in results
    )


def test_after_each_evaluation_the_stage_s_modes_are_back():
    model = _model()
    plan = plan_stages(3, 1, 1, head_epochs=1, stage_epochs=1)
    modes = []
    _train(model, plan, on_epoch=lambda result: modes.append([block.training for block in model.blocks]))
    # stage 0: every block frozen (eval); stage 1: the top block trains
    assert modes == [[False, False, False], [False, False, True]]


def test_a_non_finite_loss_stops_the_run_at_the_end_of_the_epoch():
    model = _model()
    with torch.no_grad():
        model.head.bias[0] = float("nan")  # as a diverged step leaves it
    plan = plan_stages(3, 0, 1, head_epochs=3, stage_epochs=1)
    seen = []
    with pytest.raises(NonFiniteLossError, match="training loss is nan over an epoch of 32 examples"):
        _train(model, plan, on_epoch=seen.append)
    assert seen == []  # the first epoch did not reach its evaluation


def test_the_evaluation_hands_over_the_pooled_features_a_second_pass_would_compute():
    model = _model()
    plan = plan_stages(3, 1, 1, head_epochs=1, stage_epochs=1)
    results = _train(model, plan, features_at=frozenset({1}))
    assert results[0].val_features is None  # not asked for
    again = pooled_features(model, _sources(model, plan.cut)[1], 64, torch.device("cpu"))
    torch.testing.assert_close(results[1].val_features, again)


def test_a_stage_that_lowers_validation_is_undone_and_the_run_ends_at_its_best_epoch():
    model = _model()
    plan = plan_stages(3, 1, 1, head_epochs=1, stage_epochs=1)
    before_stage_one = {}
    staged = _staged(
        model,
        plan,
        on_epoch=lambda r: before_stage_one.update(_weights(model)) if r.epoch == 0 else None,
        metric="loss",
        maximize=False,
        method=_WreckingStageOne(_CONFIG),
    )
    assert staged.epochs[1].val["loss"] > staged.epochs[0].val["loss"]  # stage 1 hurt
    assert [o.outcome for o in staged.stages] == ["kept", "rolled_back"]
    assert staged.final is staged.epochs[0] and staged.stages[1].best_epoch == 0
    after = _weights(model)
    for name, tensor in before_stage_one.items():  # head and block exactly as before stage 1
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0)


def test_without_rollback_the_run_keeps_what_its_last_stage_did():
    model = _model()
    plan = plan_stages(3, 1, 1, head_epochs=1, stage_epochs=1)
    staged = _staged(
        model, plan, metric="loss", maximize=False, rollback=False, method=_WreckingStageOne(_CONFIG)
    )
    assert staged.stages == [] and staged.final is staged.epochs[-1]
    assert staged.final.val["loss"] > staged.epochs[0].val["loss"]


def test_a_stage_that_improves_validation_is_kept():
    model = _model()
    plan = plan_stages(3, 1, 1, head_epochs=1, stage_epochs=3)
    staged = _staged(model, plan, head_lr=0.05, metric="loss", maximize=False)
    losses = [e.val["loss"] for e in staged.epochs]
    assert staged.final.val["loss"] == min(losses)  # the run's value is its best epoch
    ends_at_best = losses[-1] == min(losses)
    assert staged.stages[-1].outcome == ("kept" if ends_at_best else "rolled_back")


def test_macro_f1_is_the_mean_over_classes_present_of_each_class_s_f1():
    predicted, truth = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 1 fp 0 fn 1 -> 2/3; class 2: tp 2 fp 1 fn 0 -> 0.8
    assert macro_f1(predicted, truth, num_classes=4) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
