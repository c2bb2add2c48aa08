"""Forgetting figures: a model that has not moved from its pretrained weights shows CKA 1 and no
weight change; training moves them; they are measured at the end of each fine-tuning stage."""

from __future__ import annotations

import pytest

from sweeper.cache import PrefixCache
from sweeper.config import TrialConfig
from sweeper.fit import fit
from sweeper.forgetting import ForgettingMeter
from sweeper.runtime import StudyRuntime, prepare
from sweeper.spec import load_spec
from tests.conftest import write_spec


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    spec = load_spec(write_spec(tmp_path_factory.mktemp("forgetting"), per_class=15))
    return StudyRuntime(prepare(spec, "cpu"), PrefixCache(None))


def test_an_unmoved_model_shows_no_forgetting(runtime):
    plan = TrialConfig(2, 0.01, 1, 0.1, 1, 1).plan(runtime.pretrained.num_blocks)
    model = runtime.pretrained.build(runtime.num_classes, trainable_from=plan.cut)
    figures = ForgettingMeter(runtime, model, plan).measure(stage=1)
    assert figures["forgetting_cka"] == pytest.approx(1.0, abs=1e-5)
    assert figures["weight_change_block4"] == figures["weight_change_block5"] == 0.0


def test_fine_tuning_moves_the_figures_stage_by_stage(runtime):
    config = TrialConfig(2, 0.01, 1, lr_ratio=1.0, stage_epochs=2, blocks_per_stage=1)
    meter = ForgettingMeter(runtime, runtime.pretrained.build(runtime.num_classes, 4), config.plan(6))
    assert meter.stage_ends == {2, 4}  # head: epoch 0; stage 1: epochs 1-2; stage 2: epochs 3-4
    result = fit(runtime, config, seed=0)
    assert [entry["stage"] for entry in result.forgetting] == [1, 2]
    last = result.forgetting[-1]
    assert last["cka"] < 1.0 and set(last["weight_change"]) == {"4", "5"}
    assert all(change > 0 for change in last["weight_change"].values())
    # stage 1 trains only the top block: the block below has not moved yet
    assert result.forgetting[0]["weight_change"]["4"] == 0.0 < result.forgetting[0]["weight_change"]["5"]
