"""The search space: parameter names are the [search] keys, every draw lies in the spec's
ranges, feature extraction draws only what it uses, the two baselines come first, and the pruner's
horizon covers the longest plan the space allows."""

from __future__ import annotations

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.config import TrialConfig
from sweeper.search_space import baseline_configs, max_total_epochs, optuna_params, suggest_config
from sweeper.spec import SearchSection, bounds


@st.composite
def _spaces(draw) -> SearchSection:
    def int_range(low_floor: int, top: int):
        low = draw(st.integers(low_floor, top))
        return (low, draw(st.integers(low, top)))

    return SearchSection(
        unfrozen_blocks=int_range(0, 6),
        lr_ratio=(draw(st.floats(0.001, 0.05)), draw(st.floats(0.05, 1.0))),
        head_lr=(1e-4, 1e-2),
        head_epochs=int_range(1, 4),
        stage_epochs=int_range(1, 3),
        blocks_per_stage=int_range(1, 3),
    )


@settings(max_examples=40, deadline=None)
@given(space=_spaces(), seed=st.integers(0, 1000))
def test_every_draw_lies_in_the_spec_s_ranges_and_feature_extraction_draws_three(space, seed):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(5):
        trial = study.ask()
        config = suggest_config(trial, space)
        assert trial.params == config.params()  # Optuna's names are the config's (the [search] keys)
        for key, value in config.params().items():
            low, high = bounds(getattr(space, key))
            assert low <= value <= high, key
        if config.unfrozen_blocks == 0:
            assert set(trial.params) == {"unfrozen_blocks", "head_lr", "head_epochs"}
        study.tell(trial, 0.5)


@settings(max_examples=40, deadline=None)
@given(space=_spaces())
def test_no_plan_of_the_space_outlasts_the_pruner_s_horizon(space):
    longest = max_total_epochs(space)
    low_blocks, high_blocks = bounds(space.unfrozen_blocks)
    for blocks in range(low_blocks, high_blocks + 1):
        for per_stage in range(bounds(space.blocks_per_stage)[0], bounds(space.blocks_per_stage)[1] + 1):
            stages = -(-blocks // per_stage)
            epochs = bounds(space.head_epochs)[1] + stages * bounds(space.stage_epochs)[1]
            assert epochs <= longest
    assert (
        longest
        == bounds(space.head_epochs)[1]
        + -(-high_blocks // bounds(space.blocks_per_stage)[0]) * bounds(space.stage_epochs)[1]
    )


def test_the_baselines_are_pure_feature_extraction_then_full_fine_tuning_at_the_practice_ratio():
    space = SearchSection(
        unfrozen_blocks=(0, 6), lr_ratio=(0.001, 1.0), head_lr=(1e-4, 1e-2), head_epochs=(1, 3)
    )
    frozen, tuned = baseline_configs(space)
    assert (frozen.unfrozen_blocks, frozen.head_epochs, frozen.lr_ratio) == (0, 3, None)
    assert tuned.unfrozen_blocks == 6 and abs(tuned.lr_ratio - 0.0316) < 1e-3  # between 1/100 and 1/10
    assert frozen.head_lr == tuned.head_lr == 1e-3  # the middle of the range, on a log scale


def test_a_practice_ratio_outside_the_range_is_moved_into_it():
    (tuned,) = baseline_configs(SearchSection(unfrozen_blocks=(2, 4), lr_ratio=(0.2, 0.5)))
    assert tuned.lr_ratio == 0.2 and tuned.unfrozen_blocks == 4  # no feature-extraction baseline: 0 is out


@settings(max_examples=30, deadline=None)
@given(space=_spaces(), arm=st.sampled_from(["feature_extraction", "fine_tuning"]))
def test_a_trial_claimed_for_an_arm_draws_only_that_arm(space, arm):
    low, high = bounds(space.unfrozen_blocks)
    if (arm == "fine_tuning" and high == 0) or (arm == "feature_extraction" and low > 0):
        return  # the arm is not in this space: never claimed
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    config = suggest_config(study.ask(), space, arm)
    assert config.strategy == arm


def test_the_method_is_drawn_only_for_fine_tuning_and_only_where_several_are_listed():
    several = SearchSection(unfrozen_blocks=(0, 2), method=("unfreeze", "layer_decay"), lr_decay=(0.5, 0.9))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        config = suggest_config(trial, several)
        assert trial.params == optuna_params(config, several)  # what a trial draws, to enqueue it
        assert TrialConfig.from_params(trial.params) == config  # and back
        if config.unfrozen_blocks == 0:
            assert "method" not in trial.params and config.method == "unfreeze"
        else:
            seen.add(trial.params["method"])
            assert ("lr_decay" in trial.params) == (config.method == "layer_decay")
        study.tell(trial, 0.5)
    assert seen == {"unfreeze", "layer_decay"}
    one = SearchSection(unfrozen_blocks=2, method="layer_decay", lr_decay=0.7)
    trial = optuna.create_study().ask()
    config = suggest_config(trial, one)
    assert "method" not in trial.params and trial.params["lr_decay"] == 0.7  # named by its own param
    assert TrialConfig.from_params(trial.params) == config and config.method == "layer_decay"


def test_each_listed_method_has_a_full_fine_tuning_baseline_staged_unfreezing_first():
    _, unfreeze, decay = baseline_configs(SearchSection(method=("layer_decay", "unfreeze")))
    assert unfreeze.method == "unfreeze" and unfreeze.lr_decay is None
    assert decay.method == "layer_decay" and decay.lr_decay == pytest.approx(0.775)
    # the same blocks, head and stages for each: only the method and its own parameters differ
    assert (decay.unfrozen_blocks, decay.head_lr, decay.stage_epochs, decay.lr_ratio) == (
        unfreeze.unfrozen_blocks,
        unfreeze.head_lr,
        unfreeze.stage_epochs,
        unfreeze.lr_ratio,
    )
    _, tuned = baseline_configs(SearchSection(method="layer_decay", lr_decay=(0.6, 0.9)))
    assert tuned.method == "layer_decay" and tuned.lr_decay == pytest.approx(0.75)
    _, lora = baseline_configs(SearchSection(method=("lora",), lora_rank=(4, 16)))
    assert lora.lora_rank == 8 and lora.lr_ratio is None


def test_a_lora_trial_draws_its_rank_and_alpha_and_no_lr_ratio():
    space = SearchSection(
        unfrozen_blocks=(1, 2), method=("lora", "unfreeze"), lora_rank=(2, 32), lora_alpha=(4.0, 64.0)
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    drawn = []
    for _ in range(20):
        trial = study.ask()
        config = suggest_config(trial, space)
        drawn.append(config.method)
        lora = config.method == "lora"
        assert ("lr_ratio" in trial.params) != lora and (
            {"lora_rank", "lora_alpha"} <= set(trial.params)
        ) == lora
        if lora:
            assert (
                2 <= config.lora_rank <= 32 and 4.0 <= config.lora_alpha <= 64.0 and config.lr_ratio is None
            )
        assert TrialConfig.from_params(trial.params) == config
        study.tell(trial, 0.5)
    assert set(drawn) == {"lora", "unfreeze"}
