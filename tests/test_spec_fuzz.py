"""A fuzz run of the spec loader: whatever a spec file holds (bytes that are not UTF-8, text that is
not TOML, TOML of any shape, the default spec with keys and values changed), loading it gives a
Spec or one UserError naming the file, never another exception; and the CLI shows no traceback."""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeper.errors import UserError
from sweeper.spec import Spec, load_spec

DEFAULT_SPEC = Path(__file__).parents[1] / "studies" / "vader-minilm.toml"
DEFAULT = tomllib.loads(DEFAULT_SPEC.read_text(encoding="utf-8"))
SECTIONS = [name for name in Spec.model_fields if name != "source_path"]
KNOWN_KEYS = sorted({key for name in SECTIONS for key in Spec.model_fields[name].annotation.model_fields})

# a longer run: SWEEPER_FUZZ_EXAMPLES=5000 pytest tests/test_spec_fuzz.py
FUZZ = settings(
    max_examples=int(os.environ.get("SWEEPER_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)  # any Unicode text but lone surrogates
keys = st.sampled_from(SECTIONS + KNOWN_KEYS + ["source_path"]) | text
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),  # inf and nan included: TOML has them
    st.booleans(),
    text,
    st.sampled_from(["accuracy", "loss", "transformers", "torchvision", "csv", "imagefolder", "digits"]),
    st.dates(),
    st.datetimes(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string (control characters escaped)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _toml(document: dict) -> str:
    """A TOML text of ``document``: its plain values first, then one [table] per dict value."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in document.items() if not isinstance(v, dict)]
    for name, table in document.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_key(name)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@st.composite
def mutated_default(draw) -> dict:
    """The default spec with a few keys set to other values, deleted, misspelled or replaced."""
    document = copy.deepcopy(DEFAULT)
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(SECTIONS) | text)
        action = draw(st.sampled_from(["set", "delete", "misspell", "replace section"]))
        table = document.get(section)
        if action == "replace section" or not isinstance(table, dict):
            document[section] = draw(values)
        elif action == "set":
            table[draw(st.sampled_from(KNOWN_KEYS) | text)] = draw(values)
        elif table and action == "delete":
            del table[draw(st.sampled_from(sorted(table)))]
        elif table:
            key = draw(st.sampled_from(sorted(table)))
            table[key + draw(st.text("s_-xX", min_size=1, max_size=2))] = table.pop(key)
    return document


def _loads_or_refuses(path: Path) -> None:
    try:
        load_spec(path)
    except UserError as exc:
        for line in str(exc).splitlines():
            assert line.startswith(f"{path}: "), f"a line does not name the file: {line}"
            assert not line.startswith(f"{path}: [] "), f"a line does not name the key: {line}"
            assert len(line) < 800, f"a value is not shortened: {line}"


@FUZZ
@given(content=st.binary(max_size=400))
def test_any_bytes_load_or_give_one_user_error(tmp_path, content):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(content)
    _loads_or_refuses(path)


@FUZZ
@given(document=st.dictionaries(keys, values | st.dictionaries(keys, values, max_size=6), max_size=6))
def test_toml_of_any_shape_loads_or_gives_one_user_error(tmp_path, document):
    path = tmp_path / "fuzz.toml"
    path.write_text(_toml(document), encoding="utf-8")
    _loads_or_refuses(path)


@FUZZ
@given(document=mutated_default())
def test_the_default_spec_with_keys_and_values_changed_loads_or_gives_one_user_error(tmp_path, document):
    path = tmp_path / "fuzz.toml"
    path.write_text(_toml(document), encoding="utf-8")
    _loads_or_refuses(path)


@FUZZ
@given(data=st.data())
def test_the_default_spec_with_bytes_cut_or_inserted_loads_or_gives_one_user_error(tmp_path, data):
    content = DEFAULT_SPEC.read_bytes()
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(content)))
        cut = data.draw(st.integers(0, 20))
        content = content[:at] + data.draw(st.binary(max_size=8)) + content[at + cut :]
    path = tmp_path / "fuzz.toml"
    path.write_bytes(content)
    _loads_or_refuses(path)


def test_the_serializer_writes_the_default_spec_back_as_it_was():
    # the fuzz above reaches the validation only if its TOML texts parse: check the writer once
    assert tomllib.loads(_toml(DEFAULT)) == DEFAULT


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, content",
    [
        ("nested.toml", b"[study]\nname = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        ("latin1.toml", DEFAULT_SPEC.read_text().replace("# The", "# Th\xe9").encode("latin-1")),
    ],
)
def test_the_study_command_on_a_bad_spec_prints_one_line_and_no_traceback(tmp_path, name, content):
    spec = tmp_path / name
    spec.write_bytes(content)
    env = {k: v for k, v in os.environ.items() if k not in ("SWEEPER_STORAGE", "MLFLOW_TRACKING_URI")}
    done = subprocess.run(
        [sys.executable, "-m", "sweeper", "study", str(spec)],
        cwd=tmp_path,
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {spec}"), output
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written
