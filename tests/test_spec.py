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


def test_the_method_is_one_name_or_a_list_of_known_ones_and_unknown_ones_are_refused_with_the_list(tmp_path):
    assert load_spec(write_spec(tmp_path)).search.methods == ("unfreeze",)  # the default
    message = _error_for(tmp_path, search={"method": ["unfreeze", "lorra"]})
    assert "[search] method" in message and "'lorra' is not known" in message and "unfreeze" in message
    assert "name each method once" in _error_for(tmp_path, search={"method": ["unfreeze", "unfreeze"]})
    assert "empty list" in _error_for(tmp_path, search={"method": []})


def test_lr_decay_above_one_is_refused(tmp_path):
    message = _error_for(tmp_path, search={"lr_decay": [0.5, 1.2]})
    assert "lr_decay" in message and "(0, 1]" in message


def test_keys_of_methods_the_study_does_not_search_leave_its_identity_as_it_was(tmp_path):
    plain = load_spec(write_spec(tmp_path)).search_fingerprint()
    other_rank = load_spec(
        write_spec(tmp_path, search={"lora_rank": 2, "lr_decay": 0.5})
    ).search_fingerprint()
    assert plain == other_rank and "method" not in plain["search"]  # studies made before methods read alike
    assert {"unfrozen_blocks", "lr_ratio"} <= set(plain["search"])


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


def test_a_study_name_too_long_for_a_file_name_is_refused_shortened_with_the_rule_and_an_example(tmp_path):
    message = _error_for(tmp_path, study={"name": "a" * 300})
    assert "[study] name is 'aaaa" in message and "(300 characters)" in message
    assert "a" * 100 not in message  # the value is shortened, the message stays one line
    assert "1–100 characters" in message and "letters, digits and . _ -" in message
    assert '"vader-minilm"' in message


def test_a_study_name_of_up_to_100_letters_digits_dots_dashes_and_underscores_is_taken(tmp_path):
    for name in ("x", "vader-minilm_v2.1", "A" + "b" * 99):
        assert load_spec(write_spec(tmp_path, study={"name": name})).study.name == name
    assert "1–100 characters" in _error_for(tmp_path, study={"name": "A" + "b" * 100})


@pytest.mark.parametrize(
    "name", ["", "my study", "a/b", "../up", ".hidden", "-flag", "_x", "café", "tab\there"]
)
def test_a_study_name_unsafe_as_a_folder_or_in_a_shell_is_refused(tmp_path, name):
    # spaces: the name is typed in shell commands and is a link target in the table across studies
    message = _error_for(tmp_path, study={"name": name})
    assert "[study] name is" in message and "starting with a letter or digit" in message


def test_the_seed_is_one_numpy_takes(tmp_path):
    assert load_spec(write_spec(tmp_path, study={"seed": 2**32 - 1})).study.seed == 2**32 - 1
    for seed in (-1, 2**32, 2**63 - 1):
        message = _error_for(tmp_path, study={"seed": seed})
        assert f"[study] seed is {seed}: use a whole number from 0 to 4294967295" in message


@pytest.mark.parametrize(
    "sections, key",
    [
        ({"decision": {"min_gain": float("inf")}}, "[decision] min_gain is inf"),
        ({"train": {"weight_decay": float("nan")}}, "[train] weight_decay is nan"),
        ({"search": {"head_lr": [0.001, float("inf")]}}, "[search] head_lr is [0.001, inf]"),
        ({"data": {"val_fraction": float("nan")}}, "[data] val_fraction is nan"),
    ],
)
def test_inf_and_nan_are_refused_where_a_number_is_expected(tmp_path, sections, key):
    message = _error_for(tmp_path, **sections)  # TOML reads `inf` and `nan` as floats
    assert key in message


def test_true_or_false_is_refused_where_a_number_is_expected_and_taken_by_switches(tmp_path):
    message = _error_for(tmp_path, budget={"trials": True})  # pydantic alone reads it as 1 trial
    assert "[budget]: trials is true/false, but only on/off keys" in message
    assert "head_epochs is true/false" in _error_for(tmp_path, search={"head_epochs": [True, 3]})
    assert load_spec(write_spec(tmp_path, train={"rollback": False})).train.rollback is False


def test_a_section_given_as_a_value_or_an_array_of_tables_says_it_must_be_a_table(tmp_path):
    spec = tmp_path / "odd.toml"
    spec.write_text('study = 5\n[[model]]\nsource = "torchvision"\n[data]\nkind = "digits"\n')
    with pytest.raises(UserError) as caught:
        load_spec(spec)
    message = str(caught.value)
    assert "[study] is 5, but must be a table" in message and "[model] is [" in message


@pytest.mark.parametrize("nesting", ["[" * 3000 + "]" * 3000, "{a = " * 3000 + "1" + "}" * 3000])
def test_values_nested_too_deeply_to_read_are_a_user_error(tmp_path, nesting):
    spec = tmp_path / "deep.toml"
    spec.write_text(f"[search]\nhead_lr = {nesting}\n")
    with pytest.raises(UserError, match="deep.toml: arrays or inline tables nest too deeply"):
        load_spec(spec)


def test_a_nested_value_is_shown_shortened(tmp_path):
    message = _error_for(tmp_path, search={"unfrozen_blocks": [[[[[[0]]]]], list(range(50))]})
    assert "[search] unfrozen_blocks is [[[[...]]], [0, 1, 2, 3, 4, 5, ...]]" in message


def test_source_path_is_not_a_key_of_the_file(tmp_path):
    spec = write_spec(tmp_path)
    spec.write_text('source_path = "/elsewhere/x.toml"\n' + spec.read_text())
    with pytest.raises(UserError, match=r"\[source_path\] is not a known key; allowed: study"):
        load_spec(spec)


def test_a_spec_saved_with_a_bom_loads_and_one_not_in_utf8_is_refused_by_encoding(tmp_path):
    spec = write_spec(tmp_path)
    text = spec.read_text()
    spec.write_bytes(b"\xef\xbb\xbf" + text.encode())  # as some editors save UTF-8
    assert load_spec(spec).study.name == "tiny"
    spec.write_bytes(text.replace('"accuracy"', '"accuracy" # caf\xe9').encode("latin-1"))
    with pytest.raises(UserError, match=r"tiny.toml: not UTF-8 text .* save it as UTF-8"):
        load_spec(spec)
