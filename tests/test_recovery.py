"""Recovery: whatever way a trial loses its worker, the trial ends failed with the reason, its
MLflow run ends FAILED with the same reason, and a trial whose worker died runs again."""

from __future__ import annotations

import optuna
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from sweeper.records import worker_id
from sweeper.recovery import RunFailer, StaleTrialCallback, fail_my_last_trial, fail_trials_of_workers
from sweeper.storage import Heartbeat
from sweeper.tracking import StudyTracker


def test_a_dead_workers_run_without_its_id_on_the_trial_is_found_by_its_tags_and_failed(tracking_uri):
    # the worker died after its run was created but before the run's id reached the trial
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


def _running_trial(study: optuna.Study, tracker: StudyTracker, worker: str):
    trial = study.ask({"head_lr": FloatDistribution(1e-3, 1e-1, log=True)})
    trial.set_user_attr("worker", worker)
    run = tracker.start_trial(trial.number, trial.params, {})
    trial.set_user_attr("mlflow_run_id", run.created())
    return trial, run


def test_trials_of_workers_that_exited_end_failed_with_their_runs_and_the_others_go_on(tracking_uri):
    tracker = StudyTracker(tracking_uri, "exited")
    study = optuna.create_study(direction="maximize")
    dead, _ = _running_trial(study, tracker, "host:1")
    alive, _ = _running_trial(study, tracker, "host:2")
    failed = fail_trials_of_workers(
        study, {"host:1": "worker process 1 was killed by signal 9"}, RunFailer(tracking_uri, "exited")
    )
    assert failed == [dead.number]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert study.trials[0].user_attrs["fail_reason"] == "worker process 1 was killed by signal 9"
    run = MlflowClient(tracking_uri).get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "signal 9" in run.data.tags["sweeper.reason"]
    tracker.close()


def test_a_stale_trial_s_run_ends_failed_and_its_parameters_run_again(tracking_uri):
    tracker = StudyTracker(tracking_uri, "stale")
    study = optuna.create_study(direction="maximize")
    trial, _ = _running_trial(study, tracker, "host:1")
    study.tell(trial, state=TrialState.FAIL)  # as Optuna fails a trial without heartbeats
    callback = StaleTrialCallback(RunFailer(tracking_uri, "stale"), Heartbeat(interval=1, grace=4))
    callback(study, study.trials[0])
    run = MlflowClient(tracking_uri).get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "heartbeats for 4s" in run.data.tags["sweeper.reason"]
    again = study.trials[1]
    assert again.state == TrialState.WAITING and again.system_attrs["failed_trial"] == trial.number
    assert again.params == study.trials[0].params
    tracker.close()


def test_an_interrupted_worker_fails_its_own_last_trial_and_run(tracking_uri):
    tracker = StudyTracker(tracking_uri, "interrupted")
    study = optuna.create_study(direction="maximize")
    other, _ = _running_trial(study, tracker, "host:elsewhere")
    mine, _ = _running_trial(study, tracker, worker_id())
    fail_my_last_trial(study, tracker, "Interrupted: SIGTERM")
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL]
    run = MlflowClient(tracking_uri).get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["sweeper.reason"] == "Interrupted: SIGTERM"
    tracker.close()
