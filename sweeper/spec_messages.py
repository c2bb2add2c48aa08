"""The spec's validation errors as users read them: one line per wrong key, naming the file, the
[section] key, the value given (shortened) and what is allowed."""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


def describe_validation_error(path: Path, exc: ValidationError, spec_model: type[BaseModel]) -> str:
    """One line per wrong key of the spec: the file, [section] key, the value given and the rule."""
    lines = []
    seen: set[tuple[Any, ...]] = set()
    for error in exc.errors():
        # list positions are ints; a key of the file is always a string, digits or not
        loc = tuple(str(part) for part in error["loc"] if not isinstance(part, int))
        # a union (fixed value | range) reports once per member, labelled below [section] key;
        # say it once
        loc = loc[:2] + tuple(part for part in loc[2:] if not _is_union_member_label(part))
        if loc in seen:
            continue
        seen.add(loc)
        lines.append(f"{path}: {_describe_one(loc, error, spec_model)}")
    return "\n".join(lines)


def _is_union_member_label(part: str) -> bool:
    return part in {"int", "float", "str", "tuple[int,int]", "tuple[float,float]"} or (
        part.startswith(("constrained-", "tuple[", "function-"))
    )


def _describe_one(loc: tuple[str, ...], error: dict[str, Any], spec_model: type[BaseModel]) -> str:
    section, key = (_key(loc[0]), ".".join(_key(part) for part in loc[1:])) if loc else ("", "")
    where = f"[{section}] {key}".strip() if key else f"[{section}]"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = allowed_keys(spec_model, loc)
        return f"{where} is not a known key; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{where} is missing"
    value = error.get("input")
    given = shown(list(value) if isinstance(value, tuple) else value)
    message = error["msg"].removeprefix("Value error, ")
    if kind == "model_type":  # a section given as a value
        return f"{where} is {given}, but must be a table: a [{section}] line with its keys below it"
    if kind in {"literal_error"}:
        return f"{where} is {given}, but {message[0].lower()}{message[1:]}"
    if isinstance(value, dict):
        return f"{where}: {message}"
    return f"{where} is {given}: {message}"


# values in messages: strings cut, lists and nesting shortened (a spec may hold anything)
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxother = 3, 6, 4, 40


def _key(part: str) -> str:
    # a key as written in the file; an odd one (empty, spaces, a line break) quoted and shortened
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else shown(part)


def shown(value: Any) -> str:
    """A value from the spec file as a message shows it: long strings cut, nesting shortened."""
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:40]!r}… ({len(value)} characters)"
    return _REPR.repr(value)


def allowed_keys(spec_model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """The keys allowed at ``loc``: the sections, or a section's keys."""
    if len(loc) <= 1:
        return [k for k in spec_model.model_fields if k != "source_path"]
    section_model = spec_model.model_fields[loc[0]].annotation
    return list(section_model.model_fields) if section_model else []
