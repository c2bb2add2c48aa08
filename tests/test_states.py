"""Frozen-prefix states: taken from the cache or computed live, they give the same training; a
state advanced from a lower cached block equals one computed from the input; a random transform
turns caching off, and the log says so."""

from __future__ import annotations

import logging

import optuna
import pytest
import torch
from torchvision.transforms import v2

from sweeper.cache import PrefixCache
from sweeper.config import TrialConfig
from sweeper.runtime import StudyRuntime, prepare
from sweeper.spec import load_spec
from sweeper.states import advance_states, compute_states
from sweeper.tracking import StudyTracker
from sweeper.trial import run_trial
from tests.conftest import write_spec


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("states-spec")
    spec = load_spec(write_spec(folder, search={"head_epochs": 2, "stage_epochs": 2}))
    return prepare(spec, "cpu")


@pytest.mark.parametrize("blocks", [0, 1])
def test_the_same_seed_gives_the_same_metric_with_and_without_the_cache(
    prepared, tmp_path, tracking_uri, blocks
):
    config = TrialConfig(blocks, 0.005, 2, *((0.1, 2, 1) if blocks else ()))
    values = {}
    for name, cache in (("cached", PrefixCache(tmp_path / "cache")), ("uncached", None)):
        runtime = StudyRuntime(prepared, cache)
        study = optuna.create_study(direction="maximize")
        trial = study.ask()
        run_trial(runtime, StudyTracker(tracking_uri, prepared.spec.study.name), trial, config)
        values[name] = study._storage.get_trial(trial._trial_id).intermediate_values
    assert values["cached"].keys() == values["uncached"].keys()
    for step in values["cached"]:
        assert values["cached"][step] == pytest.approx(values["uncached"][step], abs=1e-6)


def test_states_advanced_from_a_lower_block_equal_those_computed_from_the_input(prepared):
    model = prepared.pretrained.build(3, trainable_from=6)
    indices = prepared.splits.val[:40]
    at_two = compute_states(model, prepared.data, indices, 2, 16, torch.device("cpu"))
    advanced = advance_states(model, at_two, 2, 5, 16, torch.device("cpu"))
    direct = compute_states(model, prepared.data, indices, 5, 16, torch.device("cpu"))
    # the pooled features a head reads (padding positions may differ; the mask says which count)
    pool = model.neck
    torch.testing.assert_close(
        pool(model.blocks[5](advanced)), pool(model.blocks[5](direct)), atol=1e-5, rtol=1e-4
    )


def test_random_augmentation_turns_caching_off_and_says_so(prepared, caplog):
    runtime = StudyRuntime(prepared, PrefixCache(None))
    data = prepared.data
    data._transform = v2.Compose([v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32)])
    try:
        with caplog.at_level(logging.WARNING):
            source = runtime.source(prepared.pretrained.build(3), "train", 6)
    finally:
        data._transform = None
    assert source._states is None  # computed live, batch by batch
    assert "RandomHorizontalFlip" in caplog.text


def test_without_a_cache_the_frozen_prefix_runs_on_every_batch_and_the_log_says_so(prepared, caplog):
    runtime = StudyRuntime(prepared, None)
    with caplog.at_level(logging.WARNING):
        source = runtime.source(prepared.pretrained.build(3), "val", 4)
        runtime.source(prepared.pretrained.build(3), "val", 5)
    assert source._states is None and source.start == 4
    assert caplog.text.count("cache is off") == 1  # said once, not per stage
