"""The spec is validated at the boundary: one message naming file, key and what is allowed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeper.errors import UserError
from sweeper.spec import SearchSection, bounds, load_spec
from tests.conftest import write_spec


def _error_for(tmp_path, **sections) -> str:
    spec = write_spec(tmp_path, **sections)
    with pytest.raises(UserError) as caught:
        load_spec(spec)
    return str(caught.value)


def test_valid_spec_loads_with_defaults(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    assert spec.study.name == "tiny"
    assert spec.search.unfrozen_blocks == (0, 2)
    assert spec.budget.confirm_seeds == 3  # default
    assert spec.decision.min_gain == 0.01  # default
    assert spec.resolve("tiny.csv") == tmp_path / "tiny.csv"  # relative to the spec's folder


def test_unknown_key_names_file_section_key_and_allowed_keys(tmp_path):
    message = _error_for(tmp_path, search={"unfrozen_block": [0, 2]})
    assert "tiny.toml" in message
    assert "[search] unfrozen_block is not a known key" in message
    assert "unfrozen_blocks" in message and "lr_ratio" in message


def test_unknown_section_is_refused(tmp_path):
    message = _error_for(tmp_path, serch={"x": 1})
    assert "[serch] is not a known key" in message and "search" in message


def test_wrong_type_is_refused_with_the_value(tmp_path):
    message = _error_for(tmp_path, budget={"trials": "many"})
    assert "[budget] trials is 'many'" in message


def test_reversed_range_is_refused(tmp_path):
    message = _error_for(tmp_path, search={"head_lr": [0.1, 0.001]})
    assert "head_lr is [0.1, 0.001], but low must not exceed high" in message


def test_lr_ratio_above_one_is_refused(tmp_path):
    message = _error_for(tmp_path, search={"lr_ratio": [0.01, 3.0]})
    assert "lr_ratio" in message and "(0, 1]" in message


def test_a_seed_budget_below_the_starting_seeds_or_below_two_is_refused(tmp_path):
    message = _error_for(tmp_path, budget={"confirm_seeds": 5, "max_confirm_seeds": 4})
    assert "max_confirm_seeds is 4, but must be at least confirm_seeds (5)" in message
    assert "[budget] max_confirm_seeds is 1" in _error_for(
        tmp_path, budget={"confirm_seeds": 1, "max_confirm_seeds": 1}
    )


def test_the_defaults_follow_the_practice(tmp_path):
    spec = load_spec(write_spec(tmp_path, search={"lr_ratio": None}, budget={"fe_trials": None}, train={}))
    assert spec.search.lr_ratio == (0.01, 0.1)  # the backbone 10x to 100x slower than the head
    assert spec.budget.fe_trials == 24 and spec.budget.max_confirm_seeds == 3  # (write_spec sets 3)
    assert (spec.train.rollback, spec.train.schedule, spec.train.warmup) == (True, "linear", 0.1)


def test_unknown_metric_lists_the_allowed_ones(tmp_path):
    message = _error_for(tmp_path, study={"metric": "auc"})
    assert "[study] metric is 'auc'" in message
    assert "accuracy" in message and "macro_f1" in message and "loss" in message


def test_missing_required_key_is_named(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('[study]\nname = "x"\n[data]\nkind = "digits"\n')
    with pytest.raises(UserError, match=r"\[model\] is missing"):
        load_spec(spec)


def test_invalid_toml_names_the_file(tmp_path):
    spec = tmp_path / "broken.toml"
    spec.write_text("[study\nname=")
    with pytest.raises(UserError, match="broken.toml: not valid TOML"):
        load_spec(spec)


def test_missing_spec_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such spec file"):
        load_spec(tmp_path / "nope.toml")


_KEYS = {"unfrozen_blocks": 0, "head_epochs": 1, "stage_epochs": 1, "blocks_per_stage": 1}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(key=st.sampled_from(sorted(_KEYS)), low=st.integers(-2, 12), high=st.integers(-2, 12))
def test_an_integer_range_is_taken_exactly_when_ordered_and_within_its_floor(key, low, high):
    floor = _KEYS[key]
    if floor <= low <= high:
        assert bounds(getattr(SearchSection(**{key: (low, high)}), key)) == (low, high)
    else:
        with pytest.raises(ValueError):
            SearchSection(**{key: (low, high)})


@given(low=st.floats(1e-6, 2.0), high=st.floats(1e-6, 2.0))
def test_lr_ratio_is_a_positive_range_that_never_lets_the_backbone_outrun_the_head(low, high):
    if low <= high <= 1.0:
        assert bounds(SearchSection(lr_ratio=(low, high)).lr_ratio) == (low, high)
    else:
        with pytest.raises(ValueError):
            SearchSection(lr_ratio=(low, high))


@given(value=st.integers(1, 9))
def test_a_fixed_value_is_its_own_range(value):
    assert bounds(SearchSection(head_epochs=value).head_epochs) == (value, value)


def test_on_missing_refuses_by_default_and_takes_only_refuse_or_drop(tmp_path):
    assert load_spec(write_spec(tmp_path)).data.on_missing == "refuse"
    assert load_spec(write_spec(tmp_path, data={"on_missing": "drop"})).data.on_missing == "drop"
    message = _error_for(tmp_path, data={"on_missing": "skip"})
    assert "[data] on_missing is 'skip'" in message and "'refuse'" in message and "'drop'" in message


def test_on_missing_is_not_part_of_the_study_s_identity(tmp_path):
    # rows it drops change the data, which the data digest catches; the key itself changes nothing
    # measured, so a study made before the key existed keeps its identity
    refuse = load_spec(write_spec(tmp_path)).search_fingerprint()
    drop = load_spec(write_spec(tmp_path, data={"on_missing": "drop"})).search_fingerprint()
    assert refuse == drop and "on_missing" not in refuse["data"]
