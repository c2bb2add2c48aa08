"""MLflow records of a study: experiment, parent run, one child run per trial with its params,
per-epoch metrics, stage boundaries, timing and tags; no run left RUNNING; secrets redacted."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from mlflow import MlflowClient

from sweeper.commands import run_study
from sweeper.records import strategy_of
from sweeper.redact import redact
from sweeper.settings import Options
from sweeper.tracking import StudyTracker
from tests.conftest import write_spec


@pytest.fixture
def finished_study(workdir, tracking_uri):
    spec = write_spec(workdir)
    storage = f"sqlite:///{workdir / 'sweeper.db'}"
    run_study(spec, Options(storage=storage, tracking_uri=tracking_uri, trials=2, out=workdir / "reports"))
    return optuna.load_study(study_name="tiny", storage=storage), MlflowClient(tracking_uri)


def test_each_trial_is_a_child_run_with_params_metrics_and_tags(finished_study):
    study, client = finished_study
    experiment = client.get_experiment_by_name("tiny")
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.role` = 'study'")
    assert len(parent) == 1
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.data.tags["optuna.study"] == "tiny"
        assert run.data.tags["optuna.trial"] == str(trial.number)
        assert run.data.tags["sweeper.strategy"] == strategy_of(trial)
        # MLflow params carry the Optuna parameter names, with the same values
        assert {k: float(v) for k, v in run.data.params.items()} == pytest.approx(
            {k: float(v) for k, v in trial.params.items()}
        )
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        steps = sorted(m.step for m in history)
        assert steps == list(range(len(trial.intermediate_values)))  # one per epoch, across stages
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [trial.intermediate_values[s] for s in steps]
        )
        for key in ("train_loss", "train_accuracy", "val_loss", "val_macro_f1", "stage"):
            assert key in run.data.metrics
        assert run.data.metrics["wall_seconds"] >= run.data.metrics["device_seconds"] > 0
        assert run.data.metrics["value"] == pytest.approx(trial.value)


def test_stage_boundaries_are_recorded_per_epoch_and_as_a_tag(finished_study):
    study, client = finished_study
    fine_tuning = next(t for t in study.trials if t.params["unfrozen_blocks"] == 2)
    run = client.get_run(fine_tuning.user_attrs["mlflow_run_id"])
    stages = sorted(client.get_metric_history(run.info.run_id, "stage"), key=lambda m: m.step)
    assert [int(m.value) for m in stages] == [0, 1, 2]  # head, + top block, + the next one
    assert run.data.tags["sweeper.stage_starts"] == "0,1,2"


def test_no_run_is_left_running(finished_study):
    _, client = finished_study
    experiment = client.get_experiment_by_name("tiny")
    statuses = {r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert "RUNNING" not in statuses


def test_the_study_report_is_an_artifact_of_the_parent_run(finished_study):
    _, client = finished_study
    experiment = client.get_experiment_by_name("tiny")
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.role` = 'study'")[0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/report.json", "report/curves.png"} <= names
    assert parent.data.params["study.name"] == "tiny"


def test_a_second_tracker_finds_the_same_experiment_and_parent_run(tracking_uri):
    first = StudyTracker(tracking_uri, "shared")
    second = StudyTracker(tracking_uri, "shared")
    assert first.experiment_id == second.experiment_id
    assert first.parent_run_id == second.parent_run_id


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql+psycopg://bob:hunter2@db:5432/optuna", "postgresql+psycopg://bob:***@db:5432/optuna"),
        ("http://u:p%40ss@mlflow:5000", "http://u:***@mlflow:5000"),
        ("failed: postgresql://x:y@h/d?password=z", "failed: postgresql://x:***@h/d?password=***"),
        ("sqlite:///sweeper.db", "sqlite:///sweeper.db"),
    ],
)
def test_passwords_in_urls_are_redacted(text, shown):
    assert redact(text) == shown


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_short_epochs_are_written_with_the_end_of_the_run_each_at_its_step(tracking_uri):
    tracker = StudyTracker(tracking_uri, "short")
    created = []
    run = tracker.start_trial(0, {"head_lr": 0.01}, {"sweeper.strategy": "x"}, on_created=created.append)
    for epoch in range(3):
        run.log_epoch(epoch, {"val_accuracy": 0.5 + epoch / 10})
    run_id = run.created()
    tracker.flush()
    client = MlflowClient(tracking_uri)
    assert created == [run_id]
    held_back = client.get_run(run_id).data  # the epochs took no time: one write at the end
    assert held_back.params == {} and _history(client, run_id, "val_accuracy") == []
    run.end("COMPLETE", metrics={"value": 0.7})
    tracker.flush()
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.data.metrics["value"] == 0.7
    assert finished.data.params == {"head_lr": "0.01"}
    history = _history(client, run_id, "val_accuracy")
    assert [step for step, _ in history] == [0, 1, 2]
    assert [value for _, value in history] == pytest.approx([0.5, 0.6, 0.7])


def test_long_epochs_are_written_as_they_end(tracking_uri, monkeypatch):
    import sweeper.tracking

    monkeypatch.setattr(sweeper.tracking, "LOG_EVERY_SECONDS", 0.0)  # every epoch is "long"
    tracker = StudyTracker(tracking_uri, "long")
    run = tracker.start_trial(0, {"head_lr": 0.01}, {})
    run.log_epoch(0, {"val_accuracy": 0.5})
    tracker.flush()
    client = MlflowClient(tracking_uri)
    assert _history(client, run.created(), "val_accuracy") == [(0, 0.5)]
    assert client.get_run(run.created()).data.params == {"head_lr": "0.01"}
    assert client.get_run(run.created()).info.status == "RUNNING"
    run.end("PRUNED", reason="pruned after epoch 0")
    tracker.flush()
    assert client.get_run(run.created()).info.status == "KILLED"


def test_an_mlflow_error_in_the_background_is_logged_not_raised(tracking_uri, caplog):
    tracker = StudyTracker(tracking_uri, "broken")
    run = tracker.start_trial(0, {}, {})
    client = MlflowClient(tracking_uri)
    client.delete_run(run.created())  # MLflow refuses writes to a deleted run
    with caplog.at_level("WARNING"):
        run.log_epoch(0, {"val_accuracy": 0.5})
        run.end("COMPLETE", metrics={"value": 0.5})
        tracker.flush()
    assert "MLflow did not record a trial's run" in caplog.text
    assert caplog.text.count("did not record") == 1  # once per run, not once per write


def _wait_for_status(client: MlflowClient, run_id: str, status: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while (found := client.get_run(run_id).info.status) != status and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def test_writes_already_sent_are_made_after_the_worker_is_killed(tracking_uri):
    # the run ends in the writer process, which outlives its killed parent
    script = textwrap.dedent(
        f"""
        import os, signal
        from sweeper.tracking import StudyTracker
        tracker = StudyTracker({tracking_uri!r}, "killed")
        run = tracker.start_trial(0, {{"head_lr": 0.01}}, {{}})
        print(run.created(), flush=True)
        for epoch in range(3):
            run.log_epoch(epoch, {{"val_accuracy": 0.5}})
        run.end("COMPLETE", metrics={{"value": 0.5}})
        os.kill(os.getpid(), signal.SIGKILL)  # no flush, no exit handlers
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    run_id = done.stdout.strip()
    client = MlflowClient(tracking_uri)
    assert _wait_for_status(client, run_id, "FINISHED") == "FINISHED"
    assert client.get_run(run_id).data.metrics["value"] == 0.5
    assert [step for step, _ in _history(client, run_id, "val_accuracy")] == [0, 1, 2]


def test_a_dead_writer_process_is_replaced_and_the_runs_it_made_still_end(tracking_uri, caplog):
    tracker = StudyTracker(tracking_uri, "replaced")
    first = tracker.start_trial(0, {}, {})
    first.created()
    tracker._writer._child._process.kill()  # as the OOM killer would
    tracker._writer._child._process.wait()
    with caplog.at_level("WARNING"):
        first.end("COMPLETE", metrics={"value": 0.5})  # by its run id, through a new writer
        second = tracker.start_trial(1, {}, {})
        second.end("COMPLETE", metrics={"value": 1.0})
        tracker.flush()
    assert "did not record" not in caplog.text
    client = MlflowClient(tracking_uri)
    for run, value in ((first, 0.5), (second, 1.0)):
        finished = client.get_run(run.created())
        assert finished.info.status == "FINISHED" and finished.data.metrics["value"] == value
    tracker.close()


def test_a_dead_workers_run_without_its_id_on_the_trial_is_found_by_its_tags_and_failed(tracking_uri):
    # the worker died after its run was created but before the run's id reached the trial
    from sweeper.recovery import RunFailer

    tracker = StudyTracker(tracking_uri, "orphan")
    orphan = tracker.start_trial(7, {}, {})
    other = tracker.start_trial(8, {}, {})
    tracker.flush()
    trial = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL)
    trial.number = 7
    RunFailer(tracking_uri, "orphan")(trial, "worker stopped sending heartbeats")
    client = MlflowClient(tracking_uri)
    failed = client.get_run(orphan.created())
    assert failed.info.status == "FAILED" and "heartbeats" in failed.data.tags["sweeper.reason"]
    assert client.get_run(other.created()).info.status == "RUNNING"  # trial 8 is not touched
    tracker.close()
