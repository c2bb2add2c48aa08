"""Every setting is decided once, in one order: flag > environment variable > spec > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.settings import Options, absolute_sqlite, default_spec_path, resolve
from sweeper.spec import load_spec
from tests.conftest import write_spec


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path, budget={"trials": 7}, train={"device": "cpu"}))


@pytest.fixture
def no_environment(monkeypatch):
    for name in ("SWEEPER_STORAGE", "MLFLOW_TRACKING_URI", "SWEEPER_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)


def test_without_flags_or_environment_the_spec_then_the_defaults_decide(spec, workdir, no_environment):
    settings = resolve(Options(), spec)
    assert settings.storage == f"sqlite:///{workdir / 'sweeper.db'}"
    assert settings.tracking_uri == f"sqlite:///{workdir / 'mlflow.db'}"
    assert (settings.device, settings.trials) == ("cpu", 7)  # [train] device, [budget] trials
    assert settings.cache_dir == Path.home() / ".cache" / "sweeper"
    assert settings.out == Path("reports") / "tiny"


def test_the_environment_comes_before_the_spec_and_the_defaults(spec, workdir, no_environment, monkeypatch):
    monkeypatch.setenv("SWEEPER_STORAGE", "postgresql+psycopg://u@db/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(workdir / "env-cache"))
    settings = resolve(Options(), spec)
    assert settings.storage == "postgresql+psycopg://u@db/optuna"
    assert settings.tracking_uri == "http://mlflow:5000"
    assert settings.cache_dir == workdir / "env-cache"


def test_flags_come_first(spec, workdir, monkeypatch):
    monkeypatch.setenv("SWEEPER_STORAGE", "postgresql+psycopg://u@db/optuna")
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(workdir / "env-cache"))
    options = Options(storage="sqlite:///here.db", device="cuda:1", trials=3, cache_dir=Path("flag-cache"))
    settings = resolve(options, spec)
    assert settings.storage == f"sqlite:///{workdir / 'here.db'}"
    assert (settings.device, settings.trials) == ("cuda:1", 3)
    assert settings.cache_dir == workdir / "flag-cache"
    assert resolve(Options(no_cache=True, cache_dir=Path("x")), spec).cache_dir is None


@pytest.mark.parametrize(
    "url",
    ["sqlite:////abs/x.db", "sqlite:///:memory:", "sqlite://", "postgresql+psycopg://u@h/db", "my-db"],
)
def test_only_relative_sqlite_paths_are_made_absolute(url):
    assert absolute_sqlite(url) == url


def test_the_default_spec_is_found_from_any_folder(workdir):
    assert default_spec_path() == Path(__file__).resolve().parents[1] / "studies" / "vader-minilm.toml"
