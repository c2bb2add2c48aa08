"""The spec's validation errors read as sentences: values shortened, a union's error said once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sweeper.spec import SearchSection, Spec
from sweeper.spec_messages import allowed_keys, describe_validation_error, shown


def test_a_long_string_is_cut_with_its_length_and_deep_nesting_is_elided():
    assert shown("x" * 500) == f"{'x' * 40!r}… (500 characters)"
    assert shown([[[[[1]]]]]) == "[[[[...]]]]"
    assert shown(list(range(100))) == "[0, 1, 2, 3, 4, 5, ...]"
    assert shown(0.001) == "0.001" and shown("short") == "'short'"


def test_a_value_wrong_for_both_members_of_a_union_is_one_line():
    # head_lr takes a number or a [low, high] range: pydantic reports each member
    with pytest.raises(ValidationError) as caught:
        SearchSection.model_validate({"head_lr": "fast"})
    assert len(caught.value.errors()) > 1
    message = describe_validation_error(Path("x.toml"), caught.value, Spec)
    assert message.count("\n") == 0 and message.startswith("x.toml: [head_lr] is 'fast'")


def test_the_allowed_keys_are_the_sections_or_one_section_s_keys():
    assert allowed_keys(Spec, ())[:3] == ["study", "model", "data"] and "source_path" not in allowed_keys(
        Spec, ()
    )
    assert "head_lr" in allowed_keys(Spec, ("search", "head_lrr"))
