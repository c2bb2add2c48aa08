"""The study's identity: recorded when the study is created; a later change of the data, the
weights or the search space is refused, naming which; a study that holds no digests (made before
they were recorded) is refused, saying why."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest

from sweeper.backbones import load_pretrained
from sweeper.errors import UserError
from sweeper.identity import StudyIdentity, check, record_or_check
from sweeper.records import StudyAttr
from sweeper.runtime import labelled_split
from sweeper.spec import load_spec
from tests.conftest import write_spec


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path))


def _identity(spec, data: str = "data-1", weights: str = "weights-1") -> StudyIdentity:
    search = json.loads(json.dumps(spec.search_fingerprint()))
    return StudyIdentity(search, data, weights, "tiny.csv")


def _study() -> optuna.Study:
    return optuna.create_study()  # in memory


def test_a_new_study_records_its_identity_and_the_same_identity_continues_it(spec):
    study = _study()
    record_or_check(study, spec, _identity(spec))
    attrs = study.user_attrs
    assert (attrs[StudyAttr.DATA_DIGEST], attrs[StudyAttr.WEIGHTS_DIGEST]) == ("data-1", "weights-1")
    record_or_check(study, spec, _identity(spec))  # no change: continued
    check(study, spec, _identity(spec))


def test_changed_data_is_refused_naming_the_data_and_how_to_start_anew(spec):
    study = _study()
    record_or_check(study, spec, _identity(spec))
    with pytest.raises(UserError) as caught:
        record_or_check(study, spec, _identity(spec, data="data-2"))
    said = str(caught.value)
    assert "study 'tiny' was created with other data (the examples or labels of tiny.csv" in said
    assert "weights" not in said.split("Restore")[0] and "search space" not in said
    assert "give [study] name a new value" in said and "optuna delete-study --study-name tiny" in said
    assert study.user_attrs[StudyAttr.DATA_DIGEST] == "data-1"  # nothing overwritten


def test_changed_weights_are_refused_naming_the_model(spec):
    study = _study()
    record_or_check(study, spec, _identity(spec))
    with pytest.raises(UserError, match=r"other model weights \(those of \[model\] package:") as caught:
        check(study, spec, _identity(spec, weights="weights-2"))
    assert "other data" not in str(caught.value)


def test_a_changed_search_space_is_refused_naming_the_key(spec):
    study = _study()
    record_or_check(study, spec, _identity(spec))
    search = _identity(spec).search
    changed = dataclasses.replace(
        _identity(spec), search={**search, "search": {**search["search"], "head_lr": [0.1, 1.0]}}
    )
    with pytest.raises(UserError) as caught:
        check(study, spec, changed)
    assert "another search space ([search] head_lr was [0.001, 0.01], now [0.1, 1.0])" in str(caught.value)
    assert "other data" not in str(caught.value)


def test_data_and_weights_changed_together_are_both_named(spec):
    study = _study()
    record_or_check(study, spec, _identity(spec))
    with pytest.raises(UserError, match="other data .*; and with other model weights"):
        check(study, spec, _identity(spec, data="data-2", weights="weights-2"))


def test_a_study_without_recorded_digests_is_refused_saying_why(spec):
    study = _study()
    study.set_user_attr(StudyAttr.FINGERPRINT, _identity(spec).search)  # as earlier versions left it
    with pytest.raises(
        UserError, match="created by an earlier sweeper that did not record digests"
    ) as caught:
        record_or_check(study, spec, _identity(spec))
    assert "To go on with this data and these weights, give [study] name a new value" in str(caught.value)
    assert StudyAttr.DATA_DIGEST not in study.user_attrs  # not silently adopted


def test_a_spec_s_identity_holds_the_digests_of_its_data_and_weights(spec):
    raw, _ = labelled_split(spec)
    pretrained = load_pretrained(spec.model, spec.resolve)
    identity = StudyIdentity.of(spec, raw, pretrained)
    assert (identity.data, identity.weights) == (raw.digest(), pretrained.digest)
    assert identity.search == json.loads(
        json.dumps(spec.search_fingerprint())
    ) and identity.data_source.endswith("tiny.csv")
