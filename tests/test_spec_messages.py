"""The spec's validation errors read as sentences: values shortened, a union's error said once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sweeper.errors import UserError
from sweeper.spec import SearchSection, Spec, load_spec
from sweeper.spec_messages import allowed_keys, shown
from tests.conftest import write_spec


def test_a_long_string_is_cut_with_its_length_and_deep_nesting_is_elided():
    assert shown("x" * 500) == f"{'x' * 40!r}… (500 characters)"
    assert shown([[[[[1]]]]]) == "[[[[...]]]]"
    assert shown(list(range(100))) == "[0, 1, 2, 3, 4, 5, ...]"
    assert shown(0.001) == "0.001" and shown("short") == "'short'"


def test_a_value_wrong_for_both_members_of_a_union_is_one_line(tmp_path):
    # head_lr takes a number or a [low, high] range: pydantic reports each member
    with pytest.raises(ValidationError) as caught:
        SearchSection.model_validate({"head_lr": "fast"})
    assert len(caught.value.errors()) > 1
    with pytest.raises(UserError) as caught:
        load_spec(write_spec(tmp_path, search={"head_lr": "fast"}))
    assert str(caught.value).endswith(
        "tiny.toml: [search] head_lr is 'fast': Input should be a valid number, unable to parse string as a number"
    )
    assert str(caught.value).count("\n") == 0


def test_the_allowed_keys_are_the_sections_or_one_section_s_keys():
    assert allowed_keys(Spec, ())[:3] == ["study", "model", "data"] and "source_path" not in allowed_keys(
        Spec, ()
    )
    assert "head_lr" in allowed_keys(Spec, ("search", "head_lrr"))


def test_a_key_made_of_digits_is_named_as_any_other_key(tmp_path):
    spec = tmp_path / "digits.toml"
    spec.write_text('[0]\n[study]\nname = "x"\n[search]\n"1" = 2\n')
    with pytest.raises(UserError) as caught:
        load_spec(spec)
    message = str(caught.value)
    assert "[0] is not a known key" in message and "[search] 1 is not a known key" in message
    assert "[] " not in message and "[search] is not a known key" not in message
