"""The commands end to end on a real tiny study: typed outcomes that say where everything is, the
study's figures and decision on its parent run after `study` and after `report`, and one exit code
per way a command can end."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from rich.console import Console

from sweeper.commands import exit_code, make_report, run_study, run_worker
from sweeper.errors import UserError
from sweeper.interrupts import Interrupted
from sweeper.records import StudyAttr
from sweeper.report import ReportNotWritten
from sweeper.settings import Options
from sweeper.study import TrialsKeepFailing
from sweeper.workers import WorkersStopped
from tests.conftest import tmpfs, write_spec


def _parent(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    return client.search_runs([experiment], "tags.`sweeper.role` = 'study'")[0]


@pytest.mark.slow
def test_study_and_report_leave_the_study_s_figures_and_decision_on_its_parent_run(workdir, tracking_uri):
    spec = write_spec(workdir, budget={"trials": 2, "pruner": "none", "confirm_seeds": 2})
    options = Options(tracking_uri=tracking_uri)
    studied = run_study(spec, options, Console(quiet=True))
    lines = "\n".join(studied.lines())
    assert "decision:" in lines and f"mlflow ui --backend-store-uri {tracking_uri}" in lines
    assert "#/experiments/" in lines and "reports/tiny/report.md" in lines

    parent = _parent(tracking_uri)
    metrics, tags = parent.data.metrics, parent.data.tags
    assert (metrics["trials_complete"], metrics["trials_finished"], metrics["trials_fail"]) == (2, 2, 0)
    assert tags["sweeper.decision"] == studied.report.decision and tags["sweeper.confirmed"] == "false"
    # the runs table's duration of the parent run covers the study, not the 16 ms of its creation
    assert (parent.info.end_time - parent.info.start_time) / 1000 >= metrics["elapsed_seconds"] > 0

    reported = make_report([spec], options, Console(quiet=True))
    assert [r.study for r in reported.reports] == ["tiny"] and not reported.several
    tags = _parent(tracking_uri).data.tags
    assert tags["sweeper.confirmed"] == "true" and tags["sweeper.decision"] == reported.reports[0].decision
    assert _parent(tracking_uri).data.metrics["gain"] == pytest.approx(reported.reports[0].gain)


class _Done:
    def lines(self) -> list[str]:
        return ["all done"]


def _raising(exc: BaseException):
    def command():
        raise exc

    return command


@pytest.mark.parametrize(
    ("ending", "code", "said"),
    [
        (lambda: _Done(), 0, "all done"),
        (_raising(UserError("[data] path is 'x'")), 2, "error: [data] path is 'x'"),
        (_raising(TrialsKeepFailing(3, "OSError: disk")), 1, "stopped: 3 trials in a row failed"),
        (_raising(WorkersStopped("workers exited with codes [1]")), 1, "stopped: workers exited"),
        (
            _raising(ReportNotWritten(Path("reports/tiny"), OSError(28, "No space left on device"))),
            1,
            "error: could not write the report folder reports/tiny: No space left on device (ENOSPC)",
        ),
        (_raising(Interrupted(15)), 143, "interrupted"),
        (_raising(KeyboardInterrupt()), 130, "interrupted"),
    ],
    ids=["done", "bad input", "failing trials", "dead workers", "full disk", "SIGTERM", "Ctrl-C"],
)
def test_each_way_a_command_ends_has_its_exit_code_and_one_message(ending, code, said):
    console = Console(record=True, width=200)
    assert exit_code(ending, console) == code
    text = console.export_text()
    assert said in text and "Traceback" not in text


def test_a_password_in_a_message_is_hidden():
    console = Console(record=True, width=200)
    exit_code(_raising(UserError("storage URL 'postgresql://u:hunter2@h/db' is not reachable")), console)
    text = console.export_text()
    assert "hunter2" not in text and "u:***@h" in text


@pytest.mark.slow
def test_a_study_whose_frozen_features_already_separate_the_classes_keeps_feature_extraction(
    workdir, tracking_uri
):
    # numbers against words: MiniLM's frozen features tell them apart perfectly, so nothing is
    # left for the top blocks to add, and fine-tuning cannot clear min_gain
    import csv

    from tests.conftest import vader_rows

    words = [w for w, _ in vader_rows(60)][:120]
    with (workdir / "separable.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([(str(1000 + 7 * i), "number") for i in range(120)] + [(w, "word") for w in words])
    spec = write_spec(
        workdir,
        data={"path": "separable.csv"},
        search={"head_lr": 0.01, "head_epochs": 3},
        budget={"trials": 2, "fe_trials": 2, "confirm_seeds": 2},
    )
    options = Options(tracking_uri=tracking_uri)
    run_study(spec, options, Console(quiet=True))
    report = make_report([spec], options, Console(quiet=True)).reports[0]
    assert report.feature_extraction.value == 1.0  # a linear head already reads every example right
    assert report.decision == "feature_extraction" and report.conclusive is True
    assert report.reason.startswith("rule: fine-tuning cannot reach min_gain 0.01")
    assert report.seeds == 2  # a clear answer stops at the first look


@pytest.mark.slow
def test_study_and_report_state_the_rows_on_missing_drop_left_out(workdir, tracking_uri, tiny_bert):
    spec = write_spec(
        workdir,
        model={"name": str(tiny_bert)},
        data={"on_missing": "drop"},
        budget={"trials": 1, "fe_trials": 1, "confirm_seeds": 2, "max_confirm_seeds": 2},
    )
    with (workdir / "tiny.csv").open("a") as f:
        f.write("lonely,\n,positive\n  ,neutral\n")  # an empty label, two empty texts
    options = Options(tracking_uri=tracking_uri)
    assert run_study(spec, options, Console(quiet=True)).report.dropped_examples == 3
    reported = make_report([spec], options, Console(quiet=True))
    assert reported.reports[0].dropped_examples == 3
    assert json.loads((workdir / "reports" / "tiny" / "report.json").read_text())["dropped_examples"] == 3


@pytest.mark.parametrize("command", ["study", "report"])
def test_out_naming_a_file_is_refused_before_the_model_loads_and_nothing_is_written(command, workdir):
    spec = write_spec(workdir)
    (workdir / "notes.txt").write_text("the user's own file")
    console = Console(record=True, width=300)
    run = run_study if command == "study" else lambda s, o, c: make_report([s], o, c)
    assert exit_code(lambda: run(spec, Options(out=Path("notes.txt")), console), console) == 2
    text = console.export_text()
    assert "error: --out notes.txt is an existing file" in text
    assert "data:" not in text  # refused with the inputs, before the data and the model load
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt", "tiny.csv", "tiny.toml"]
    assert (workdir / "notes.txt").read_text() == "the user's own file"


def _ends(command, *said: str) -> int:
    console = Console(record=True, width=300)
    code = exit_code(command, console)
    text = console.export_text()
    assert all(part in text for part in said) and "Traceback" not in text and "hunter2" not in text, text
    return code


def test_report_on_a_study_that_does_not_exist_writes_no_study_db(workdir):
    spec = write_spec(workdir)
    assert _ends(lambda: make_report([spec], Options()), "error: no study 'tiny' in sqlite:///") == 2
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.csv", "tiny.toml"]  # no sweeper.db


def test_report_on_a_study_that_does_not_exist_creates_no_tables_in_postgresql(workdir, postgres_url):
    import sqlalchemy

    spec = write_spec(workdir)
    assert _ends(lambda: make_report([spec], Options(storage=postgres_url)), "error: no study 'tiny'") == 2
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as connection:
        assert sqlalchemy.inspect(connection).get_table_names() == []
    engine.dispose()
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.csv", "tiny.toml"]


@pytest.mark.parametrize("command", ["study", "report"])
def test_an_unreachable_tracking_uri_is_refused_in_seconds_before_anything_is_written(command, workdir):
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = write_spec(workdir)
    options = Options(tracking_uri=f"http://bob:hunter2@127.0.0.1:{port}")
    run = run_study if command == "study" else lambda s, o, c: make_report([s], o, c)
    started = time.monotonic()
    said = f"error: MLflow tracking URI 'http://bob:***@127.0.0.1:{port}' is not reachable"
    assert _ends(lambda: run(spec, options, Console(quiet=True)), said) == 2
    assert time.monotonic() - started < 60  # not MLflow's two minutes of retries (the model loads)
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.csv", "tiny.toml"]  # no study DB


# --- report on a finished study, in real processes -------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def studied(tmp_path_factory, _mlflow_template) -> Path:
    """A finished tiny study (2 trials, 2 confirmation seeds per arm to be run), made once; each
    test works on a copy of its folder."""
    folder = tmp_path_factory.mktemp("studied")
    shutil.copy(_mlflow_template, folder / "mlflow.db")
    spec = write_spec(folder, budget={"trials": 2, "confirm_seeds": 2, "max_confirm_seeds": 2})
    run_study(spec, _options(folder, out=folder / "reports" / "tiny"), Console(quiet=True))
    return folder


def _options(folder: Path, **given) -> Options:
    return Options(
        storage=f"sqlite:///{folder / 'sweeper.db'}",
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        **given,
    )


@pytest.fixture
def study_copy(studied, workdir) -> Path:
    shutil.copytree(studied, workdir, dirs_exist_ok=True)
    return workdir


def _report_process(folder: Path, *extra: str) -> subprocess.Popen:
    options = _options(folder)
    command = [sys.executable, "-m", "sweeper", "report", str(folder / "tiny.toml"), *extra]
    command += ["--storage", options.storage, "--tracking-uri", options.tracking_uri]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _lines_until(process: subprocess.Popen, text: str) -> list[str]:
    """The process's lines up to the first holding ``text`` (or all of them, when it ends first)."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            break
    return lines


def _confirmation_runs(folder: Path) -> int:
    study = optuna.load_study(study_name="tiny", storage=_options(folder).storage)
    return sum(key.startswith(StudyAttr.CONFIRMATION_PREFIX) for key in study.user_attrs)


@pytest.mark.slow
def test_a_second_report_waits_for_the_first_and_trains_no_seed_again(study_copy):
    first = _report_process(study_copy)
    seen = _lines_until(first, "confirming")
    assert seen and "confirming" in seen[-1], "".join(seen)
    os.kill(first.pid, signal.SIGSTOP)  # the first report stands still, mid-confirmation
    try:
        second = _report_process(study_copy)
        waited = _lines_until(second, "waiting")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first_out = "".join(seen) + first.communicate(timeout=600)[0]
    second_out = "".join(waited) + second.communicate(timeout=600)[0]
    assert first.returncode == 0 and second.returncode == 0, first_out + second_out
    assert "waiting: another `report` of study 'tiny' is running" in second_out
    assert second_out.count("confirming") == 0  # it read the first one's runs
    assert first_out.count("confirming") == _confirmation_runs(study_copy) == 4  # each seed once


@pytest.mark.slow
def test_ctrl_c_in_report_keeps_the_finished_confirmation_runs_and_writes_no_report(study_copy):
    out = study_copy / "reports" / "tiny"
    before = {p.name: p.read_bytes() for p in out.iterdir()}  # the search-only report of `study`
    process = _report_process(study_copy, "--out", str(out))
    seen = _lines_until(process, "confirming")
    seen += _lines_until(process, "confirming")  # the first run is done, the second under way
    process.send_signal(signal.SIGINT)
    said = "".join(seen) + process.communicate(timeout=600)[0]
    assert process.returncode == 130, said
    assert "interrupted: the confirmation runs finished so far are kept in the study DB" in said
    assert f"nothing was written to {out}" in said
    assert "marked failed" not in said and "Traceback" not in said
    assert _confirmation_runs(study_copy) >= 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no temporary folder left


@pytest.mark.slow
def test_a_full_disk_under_the_report_folder_exits_1_and_leaves_the_earlier_report(study_copy):
    with tmpfs(study_copy / "disk", size="512k") as disk:
        out = disk / "tiny"
        options = _options(study_copy, out=out)
        assert _ends(lambda: run_study(study_copy / "tiny.toml", options, Console(quiet=True))) == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        room = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "ballast").write_bytes(b"\0" * (room - 16 * 1024))  # 16 KiB left: too little
        said = f"error: could not write the report folder {out}: No space left on device (ENOSPC)"
        assert _ends(lambda: run_study(study_copy / "tiny.toml", options, Console(quiet=True)), said) == 1
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert sorted(p.name for p in disk.iterdir()) == ["ballast", "tiny"]


@pytest.mark.slow
def test_a_full_disk_under_mlflow_s_artifacts_exits_1_saying_where_the_report_is(
    workdir, _mlflow_template, tiny_bert, monkeypatch
):
    with tmpfs(workdir / "disk", size="8m") as disk:  # the working folder: study DB, MLflow, reports
        monkeypatch.chdir(disk)
        shutil.copy(_mlflow_template, disk / "mlflow.db")
        spec = write_spec(disk, model={"name": str(tiny_bert)}, budget={"trials": 2, "fe_trials": 1})
        assert _ends(lambda: run_study(spec, Options(), Console(quiet=True))) == 0
        size = sum(p.stat().st_size for p in (disk / "reports" / "tiny").iterdir())
        # as on a first report: neither the report folder nor its copy in MLflow exists yet
        shutil.rmtree(disk / "reports")
        [copy] = disk.glob("mlruns/*/*/artifacts/report")
        shutil.rmtree(copy)
        room = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "ballast").write_bytes(b"\0" * (room - size - 96 * 1024))  # the folder fits, not twice
        said = "error: the report is in reports/tiny, but MLflow could not store its copy on the study's run"
        assert _ends(lambda: run_study(spec, Options(), Console(quiet=True)), said, "(ENOSPC)") == 1
        assert json.loads((disk / "reports" / "tiny" / "report.json").read_text())["study"] == "tiny"


def _full_mlflow_database(disk: Path, template: Path | None = None) -> str:
    """MLflow's SQLite store alone on ``disk`` (a copy of ``template``, else the one there), with
    8 KiB left: its next rows do not fit."""
    if template is not None:
        shutil.copy(template, disk / "mlflow.db")
    room = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "ballast").write_bytes(b"\0" * (room - 8 * 1024))
    return f"sqlite:///{disk / 'mlflow.db'}"


@pytest.mark.slow
def test_a_full_disk_under_mlflow_s_database_refuses_a_new_study_in_one_line_and_creates_it_nowhere(
    workdir, _mlflow_template, tiny_bert
):
    with tmpfs(workdir / "disk", size="4m") as disk:
        tracking = _full_mlflow_database(disk, _mlflow_template)
        spec = write_spec(workdir, model={"name": str(tiny_bert)}, budget={"trials": 2, "fe_trials": 1})
        said = "is not usable: (sqlite3.OperationalError) database or disk is full"
        assert _ends(lambda: run_study(spec, Options(tracking_uri=tracking), Console(quiet=True)), said) == 2
        assert "tiny" not in optuna.get_all_study_names(f"sqlite:///{workdir / 'sweeper.db'}")


@pytest.mark.slow
def test_a_disk_that_fills_under_mlflow_s_database_fails_no_trial_and_exits_1_saying_where_the_report_is(
    workdir, _mlflow_template, tiny_bert, caplog
):
    spec = write_spec(workdir, model={"name": str(tiny_bert)}, budget={"trials": 2, "fe_trials": 1})
    with tmpfs(workdir / "disk", size="4m") as disk:
        shutil.copy(_mlflow_template, disk / "mlflow.db")
        options = Options(tracking_uri=f"sqlite:///{disk / 'mlflow.db'}")
        assert _ends(lambda: run_study(spec, options, Console(quiet=True))) == 0  # the experiment exists
        _full_mlflow_database(disk)  # the same store, now without room
        said = (
            "error: the report is in reports/tiny, but MLflow could not store its figures on the study's run: "
            "(sqlite3.OperationalError) database or disk is full"
        )
        more = dataclasses.replace(options, trials=4)
        with caplog.at_level("WARNING"):
            assert _ends(lambda: run_study(spec, more, Console(quiet=True)), said) == 1
        # a worker's trials are in the study DB whatever MLflow does: it warns and exits 0
        warned = "warning: MLflow did not record the study's figures on its parent run: (sqlite3"
        console = Console(record=True, width=300)
        assert exit_code(lambda: run_worker(spec, more, console), console) == 0
        assert warned in console.export_text()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'sweeper.db'}")
    states = [t.state for t in study.trials]
    assert (
        len(states) == 5 and TrialState.FAIL not in states and TrialState.RUNNING not in states
    )  # trained on
    # each trial's run: a warning, in one line
    assert (
        "MLflow did not record trial 3's run: (sqlite3.OperationalError) database or disk is full"
        in caplog.text
    )
    assert json.loads((workdir / "reports" / "tiny" / "report.json").read_text())["study"] == "tiny"


@pytest.mark.slow
def test_several_studies_are_all_checked_before_any_report_is_written(study_copy):
    specs = study_copy / "specs"
    specs.mkdir()
    shutil.copy(study_copy / "tiny.toml", specs / "tiny.toml")
    write_spec(specs, name="other")  # its study was never run
    (specs / "tiny.csv").write_bytes((study_copy / "tiny.csv").read_bytes())
    out = study_copy / "summary"
    options = _options(study_copy, out=out)
    said = "error: no study 'other' in sqlite:///"
    assert _ends(lambda: make_report([specs], options, Console(quiet=True)), said) == 2
    assert not out.exists() and _confirmation_runs(study_copy) == 0  # tiny's report not begun


# --- the study's identity: data changed since the study started --------------------------------


def _flip_labels(path: Path) -> None:
    """Every positive word made negative and every negative one positive, as an edit might."""
    swap = {"positive": "negative", "negative": "positive"}
    lines = path.read_text().splitlines()
    flipped = [lines[0]] + [
        f"{t},{swap.get(label, label)}" for t, label in (x.rsplit(",", 1) for x in lines[1:])
    ]
    path.write_text("\n".join(flipped) + "\n")


def _trial_count(storage: str) -> int:
    return len(optuna.load_study(study_name="tiny", storage=storage).trials)


@pytest.mark.slow
def test_changed_data_is_refused_by_study_worker_and_report_with_exit_2_and_nothing_added(study_copy):
    storage = _options(study_copy).storage
    trials, report_files = _trial_count(storage), sorted((study_copy / "reports" / "tiny").iterdir())
    _flip_labels(study_copy / "tiny.csv")
    spec, said = study_copy / "tiny.toml", "was created with other data (the examples or labels of"
    quiet = Console(quiet=True)
    assert _ends(lambda: run_study(spec, _options(study_copy, trials=3), quiet), said, "new value") == 2
    assert _ends(lambda: run_worker(spec, _options(study_copy, trials=3), quiet), said) == 2
    assert _ends(lambda: make_report([spec], _options(study_copy), quiet), said) == 2
    assert _trial_count(storage) == trials and _confirmation_runs(study_copy) == 0
    assert sorted((study_copy / "reports" / "tiny").iterdir()) == report_files


@pytest.mark.slow
def test_changed_data_is_refused_on_postgresql_too(workdir, tracking_uri, postgres_url, tiny_bert):
    spec = write_spec(workdir, model={"name": str(tiny_bert)}, budget={"trials": 2, "fe_trials": 1})
    options = Options(storage=postgres_url, tracking_uri=tracking_uri)
    assert _ends(lambda: run_study(spec, options, Console(quiet=True))) == 0
    trials = _trial_count(postgres_url)
    _flip_labels(workdir / "tiny.csv")
    more = dataclasses.replace(options, trials=3)
    assert _ends(lambda: run_study(spec, more, Console(quiet=True)), "was created with other data") == 2
    assert (
        _ends(lambda: make_report([spec], options, Console(quiet=True)), "was created with other data") == 2
    )
    assert _trial_count(postgres_url) == trials
