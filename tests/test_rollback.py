"""Best-epoch weights: only what the plan trains is copied, and restoring puts it back exactly."""

from __future__ import annotations

import torch

from sweeper.rollback import BestWeights, trained_parts
from sweeper.stages import plan_stages
from tests.test_train import _model


def test_only_the_head_the_unfrozen_blocks_and_the_neck_are_kept():
    model = _model()
    plan = plan_stages(3, 1, 1, head_epochs=1, stage_epochs=1)
    parts = trained_parts(model, plan)
    assert parts[0] is model.head and parts[1] is model.blocks[2] and parts[-1] is model.neck
    assert all(block not in parts for block in model.blocks[:2])  # the frozen prefix is never copied
    assert trained_parts(model, plan_stages(3, 0, 1, 1, 1)) == [model.head]  # feature extraction


def test_a_worse_stage_end_restores_the_best_weights_and_a_better_one_keeps_its_own():
    model = _model()
    plan = plan_stages(3, 1, 1, head_epochs=1, stage_epochs=1)
    best = BestWeights(model, plan, "accuracy", maximize=True)
    best.offer(0, {"accuracy": 0.6})
    kept = {k: v.clone() for k, v in model.blocks[2].state_dict().items()}
    with torch.no_grad():
        model.blocks[2].module[0].weight.add_(1.0)
    best.offer(1, {"accuracy": 0.5})
    outcome = best.end_stage(1, {"accuracy": 0.5})
    assert (outcome.outcome, outcome.best_epoch, outcome.best_value) == ("rolled_back", 0, 0.6)
    for name, tensor in model.blocks[2].state_dict().items():
        torch.testing.assert_close(tensor, kept[name], rtol=0, atol=0)
    best.offer(2, {"accuracy": 0.7})
    assert best.end_stage(2, {"accuracy": 0.7}).outcome == "kept"


def test_a_tie_with_the_best_is_kept():
    model = _model()
    best = BestWeights(model, plan_stages(3, 1, 1, 1, 1), "loss", maximize=False)
    best.offer(0, {"loss": 0.4})
    best.offer(1, {"loss": 0.4})
    assert best.end_stage(1, {"loss": 0.4}).outcome == "kept" and best.best_epoch == 0
