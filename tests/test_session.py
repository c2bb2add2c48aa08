"""A study opened for work: bad input is refused before anything is written, and leaves no
process behind; a good spec opens the study and describes it on its parent run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient
from rich.console import Console

from sweeper.errors import UserError
from sweeper.session import open_session
from sweeper.settings import Options, resolve
from sweeper.spec import load_spec
from tests.conftest import write_spec


def _writer_children() -> list[int]:
    """This process's children that are MLflow writer processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        if int(parent) == os.getpid() and b"sweeper.mlflow_writer" in cmdline:
            found.append(int(entry.name))
    return found


def test_bad_input_is_refused_before_anything_is_written_and_leaves_no_process(workdir):
    settings = resolve(Options(), load_spec(write_spec(workdir, data={"path": "gone.csv"})))
    with pytest.raises(UserError, match="gone.csv"):
        with open_session(settings, Console(quiet=True), sampler_salt=0, runs_trials=True):
            raise AssertionError("the session opened")
    assert _writer_children() == []  # started while the model would load, stopped with the refusal
    assert not (workdir / "sweeper.db").exists() and not (workdir / "mlflow.db").exists()


def test_a_session_opens_its_study_and_describes_it_on_the_parent_run(workdir, tracking_uri):
    settings = resolve(Options(tracking_uri=tracking_uri), load_spec(write_spec(workdir)))
    with open_session(settings, Console(quiet=True), sampler_salt=0, runs_trials=False) as session:
        assert session.study.study_name == "tiny" and len(session.study.trials) == 2  # the baselines, queued
        parent = MlflowClient(tracking_uri).get_run(session.tracker.parent_run_id)
        assert (
            parent.data.params["study.name"] == "tiny"
            and parent.data.params["search.unfrozen_blocks"] == "[0, 2]"
        )
    assert _writer_children() == []
