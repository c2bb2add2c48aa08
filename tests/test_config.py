"""A trial's configuration: its params are the [search] keys it drew, it rebuilds from a
trial's params, and its plan is the stage plan of those values."""

from __future__ import annotations

from sweeper.config import TrialConfig
from sweeper.stages import plan_stages


def test_feature_extraction_has_three_params_and_one_stage():
    config = TrialConfig(0, 0.003, 2)
    assert config.params() == {"unfrozen_blocks": 0, "head_lr": 0.003, "head_epochs": 2}
    assert config.strategy == "feature_extraction"
    assert config.plan(6).stage_starts == (0,)


def test_a_trial_s_params_rebuild_its_config_whatever_else_they_hold():
    config = TrialConfig(3, 0.003, 1, lr_ratio=0.05, stage_epochs=2, blocks_per_stage=2)
    assert TrialConfig.from_params({**config.params(), "from_another_version": 1}) == config
    assert config.strategy == "fine_tuning"


def test_the_plan_is_the_stage_plan_of_its_values():
    config = TrialConfig(3, 0.003, 1, lr_ratio=0.05, stage_epochs=2, blocks_per_stage=2)
    assert config.plan(6) == plan_stages(6, 3, 2, head_epochs=1, stage_epochs=2)
