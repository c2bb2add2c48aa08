"""MLflow records of a study: experiment, parent run, one child run per trial with its params,
per-epoch metrics, stage boundaries, timing and tags; no run left RUNNING; the study's figures on
its parent run; writes batched for short epochs; an MLflow error logged, never raised."""

from __future__ import annotations

import time

import optuna
import pytest
from mlflow import MlflowClient

from sweeper.commands import run_study
from sweeper.records import strategy_of
from sweeper.settings import Options
from sweeper.tracking import StudyTracker
from tests.conftest import write_spec


@pytest.fixture
def finished_study(workdir, tracking_uri):
    spec = write_spec(workdir)
    storage = f"sqlite:///{workdir / 'sweeper.db'}"
    run_study(spec, Options(storage=storage, tracking_uri=tracking_uri, trials=2, out=workdir / "reports"))
    return optuna.load_study(study_name="tiny", storage=storage), MlflowClient(tracking_uri)


@pytest.mark.slow
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
        # MLflow params carry the Optuna parameter names, with the same values, and the method
        # (a param for the UI's filter even where the spec fixes it and Optuna draws none)
        params = dict(run.data.params)
        assert (
            params.pop("method") == trial.params.get("method", "unfreeze") == run.data.tags["sweeper.method"]
        )
        numeric = {k: v for k, v in trial.params.items() if k != "method"}
        assert {k: float(v) for k, v in params.items()} == pytest.approx(
            {k: float(v) for k, v in numeric.items()}
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


@pytest.mark.slow
def test_stage_boundaries_are_recorded_per_epoch_and_as_a_tag(finished_study):
    study, client = finished_study
    fine_tuning = next(t for t in study.trials if t.params["unfrozen_blocks"] == 2)
    run = client.get_run(fine_tuning.user_attrs["mlflow_run_id"])
    stages = sorted(client.get_metric_history(run.info.run_id, "stage"), key=lambda m: m.step)
    assert [int(m.value) for m in stages] == [0, 1, 2]  # head, + top block, + the next one
    assert run.data.tags["sweeper.stage_starts"] == "0,1,2"


@pytest.mark.slow
def test_no_run_is_left_running(finished_study):
    _, client = finished_study
    experiment = client.get_experiment_by_name("tiny")
    statuses = {r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert "RUNNING" not in statuses


@pytest.mark.slow
def test_the_study_report_is_an_artifact_of_the_parent_run(finished_study):
    _, client = finished_study
    experiment = client.get_experiment_by_name("tiny")
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.`sweeper.role` = 'study'")[0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/report.json", "report/curves.png"} <= names
    assert parent.data.params["study.name"] == "tiny"


def test_the_parent_run_carries_the_study_s_figures_and_ends_when_they_were_taken(tracking_uri):
    tracker = StudyTracker(tracking_uri, "summary")
    client = MlflowClient(tracking_uri)
    before = client.get_run(tracker.parent_run_id).info  # created, and ended at once
    time.sleep(0.01)  # a clock tick: an end left where it was would show
    asked = int(time.time() * 1000)
    tracker.summarize_study(
        {"trials_complete": 3, "elapsed_seconds": 12.5}, {"sweeper.decision": "fine_tuning"}
    )
    after = client.get_run(tracker.parent_run_id)
    assert after.data.metrics == {"trials_complete": 3.0, "elapsed_seconds": 12.5}
    assert after.data.tags["sweeper.decision"] == "fine_tuning"
    assert after.info.status == "FINISHED" and after.info.end_time >= asked > before.end_time
    tracker.summarize_study({"trials_complete": 4}, {})  # a later command: the latest value shows
    assert client.get_run(tracker.parent_run_id).data.metrics["trials_complete"] == 4.0


def test_a_second_tracker_finds_the_same_experiment_and_parent_run(tracking_uri):
    first = StudyTracker(tracking_uri, "shared")
    second = StudyTracker(tracking_uri, "shared")
    assert first.experiment_id == second.experiment_id
    assert first.parent_run_id == second.parent_run_id


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
    assert "MLflow did not record trial 0's run" in caplog.text  # which one, by its trial
    assert caplog.text.count("did not record") == 1  # once per run, not once per write
