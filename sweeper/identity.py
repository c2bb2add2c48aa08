"""A study's identity: what its trials measure. The search space (the spec's keys that shape it),
the examples and labels (`RawData.digest`) and the pretrained weights (`Pretrained.digest`). It
is recorded in the study when the study is created and checked by every later `study`, `worker`
and `report`: trials on other data or weights, or of another search space, would not be
comparable, so a change is refused and names what changed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import optuna

from sweeper.backbones import Pretrained
from sweeper.data import RawData
from sweeper.errors import UserError
from sweeper.records import StudyAttr
from sweeper.spec import Spec


@dataclass(frozen=True)
class StudyIdentity:
    """The search space's fingerprint and the digests of the data and of the weights.

    Example:
        >>> identity = StudyIdentity.of(spec, prepared.data.raw, prepared.pretrained)
        >>> record_or_check(study, spec, identity)  # creates or continues; refuses a change
    """

    search: dict
    data: str
    weights: str
    data_source: str = field(default="", compare=False)  # for messages: what the data is

    @classmethod
    def of(cls, spec: Spec, raw: RawData, pretrained: Pretrained) -> StudyIdentity:
        search = json.loads(json.dumps(spec.search_fingerprint()))  # as the study DB gives it back
        return cls(search, raw.digest(), pretrained.digest, raw.description)


def record_or_check(study: optuna.Study, spec: Spec, identity: StudyIdentity) -> None:
    """Record the identity in a new study; in an existing one, refuse another (UserError)."""
    if StudyAttr.FINGERPRINT not in study.user_attrs:
        study.set_user_attr(StudyAttr.DATA_DIGEST, identity.data)
        study.set_user_attr(StudyAttr.WEIGHTS_DIGEST, identity.weights)
        study.set_user_attr(StudyAttr.FINGERPRINT, identity.search)  # last: the study is complete
        return
    check(study, spec, identity)


def check(study: optuna.Study, spec: Spec, identity: StudyIdentity) -> None:
    """Refuse (UserError) a study whose recorded identity differs from ``identity``, or that
    holds none (created before sweeper recorded the digests of data and weights)."""
    stored = study.user_attrs
    name = spec.study.name
    if StudyAttr.DATA_DIGEST not in stored or StudyAttr.WEIGHTS_DIGEST not in stored:
        raise UserError(
            f"{spec.source_path}: study {name!r} was created by an earlier sweeper that did not record "
            "digests of its data and model weights, so whether they changed since cannot be checked. "
            f"To go on with this data and these weights, {_start_anew(name)}"
        )
    changes = []
    if stored.get(StudyAttr.FINGERPRINT) != identity.search:
        changed = describe_changes(stored.get(StudyAttr.FINGERPRINT), identity.search)
        changes.append(f"another search space ({changed})")
    if stored[StudyAttr.DATA_DIGEST] != identity.data:
        changes.append(f"other data (the examples or labels of {identity.data_source} have changed since)")
    if stored[StudyAttr.WEIGHTS_DIGEST] != identity.weights:
        changes.append(f"other model weights (those of [model] {spec.model.name} have changed since)")
    if changes:
        raise UserError(
            f"{spec.source_path}: study {name!r} was created with {'; and with '.join(changes)}; its "
            f"trials would not be comparable. Restore what changed, or {_start_anew(name)}"
        )


def _start_anew(name: str) -> str:
    return (
        "give [study] name a new value to start a new study (or delete this one: "
        f"`optuna delete-study --study-name {name} --storage <the study DB>`)"
    )


def describe_changes(stored: dict | None, wanted: dict) -> str:
    """``[section] key was old, now new`` for each key of the search fingerprint that differs."""
    stored = stored or {}
    changes = []
    for section in sorted(set(stored) | set(wanted)):
        old, new = stored.get(section), wanted.get(section)
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    changes.append(f"[{section}] {key} was {old.get(key)!r}, now {new.get(key)!r}")
        elif old != new:
            changes.append(f"{section} was {old!r}, now {new!r}")
    return "; ".join(changes)
