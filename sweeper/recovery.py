"""Ending what a dead or stopped worker left running: its trial, failed with the reason, and the
trial's MLflow run, failed with the same reason. Every way a trial can lose its worker ends here:

- the worker went silent (killed, machine lost): its heartbeats stop, and the next worker that
  looks fails the trial as stale (Optuna's own check) and queues its parameters again;
- the worker process exited mid-trial: the ``--workers`` parent that started it fails the trial
  at once, without waiting for the grace period;
- Ctrl-C or SIGTERM in the worker: it fails its own last trial before it exits.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from sweeper.records import TrialAttr, worker_id
from sweeper.redact import redact
from sweeper.storage import Heartbeat
from sweeper.tracking import StudyTracker, end_running_runs_of, mark_run_failed

log = logging.getLogger(__name__)

# a trial whose worker died is queued again at most this often
MAX_RETRIES = 2


class RunFailer:
    """Ends FAILED the MLflow run of a trial that another process failed.

    Args:
        tracking_uri: the study's MLflow tracking URI.
        study_name: its experiment, where a run without its id on the trial is found by its tags.
    """

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.study_name = study_name

    def __call__(self, trial: FrozenTrial, reason: str) -> None:
        run_id = trial.user_attrs.get(TrialAttr.RUN_ID)
        if run_id:
            mark_run_failed(self.tracking_uri, run_id, reason)
        else:  # the worker died before the run's id reached the trial (the run may exist)
            end_running_runs_of(self.tracking_uri, self.study_name, trial.number, reason)


class StaleTrialCallback:
    """Optuna's heartbeat-stale callback: end the trial's MLflow run failed, then queue its
    parameters again (at most ``MAX_RETRIES`` times)."""

    def __init__(self, fail_run: RunFailer | None, heartbeat: Heartbeat) -> None:
        self.fail_run = fail_run
        self.reason = (
            f"worker stopped sending heartbeats for {heartbeat.grace}s (killed, or its machine was lost)"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        log.warning("trial %d failed: %s; queued again", trial.number, self.reason)
        if self.fail_run is not None:
            try:
                self.fail_run(trial, self.reason)
            except Exception as exc:  # the MLflow record must not stop the study
                log.warning("could not mark the run of trial %d failed: %s", trial.number, redact(str(exc)))
        self._retry(study, trial)


def reap_stale_trials(study: optuna.Study) -> None:
    """Fail the running trials whose worker stopped sending heartbeats (and queue them again)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def name_the_trial_being_claimed(study: optuna.Study) -> None:
    """Ctrl-C or SIGTERM landed after Optuna created a trial and before this worker's objective
    named it (as Optuna starts the heartbeat thread, say). Called while this worker holds the study
    lock, when every other worker names its trial before letting the lock go: the RUNNING trial
    without a worker is this one. Named, the interrupt path (:func:`fail_my_last_trial`) fails it."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if TrialAttr.WORKER not in trial.user_attrs:
            study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.WORKER, worker_id())


def fail_trials_of_workers(
    study: optuna.Study, reasons: dict[str, str], fail_run: Callable[[FrozenTrial, str], None] | None
) -> list[int]:
    """Fail the trials still RUNNING under the given workers (``{worker id: reason}``), which are
    known to have exited, and their runs; returns their numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = reasons.get(trial.user_attrs.get(TrialAttr.WORKER, ""))
        if reason is None:
            continue
        try:
            # the reason first: once the trial is finished, Optuna takes no more attributes
            study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.FAIL_REASON, reason)
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # it ended meanwhile
        failed.append(trial.number)
        if fail_run is not None:
            fail_run(trial, reason)
    return failed


def fail_my_last_trial(study: optuna.Study, tracker: StudyTracker, reason: str) -> None:
    """An interrupt can land between the steps that start or end a trial and its run: whatever of
    this worker's last trial is still running, end it failed."""
    me = worker_id()
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(TrialAttr.WORKER) == me]
    if not mine:
        return
    tracker.flush()  # the run of the last trial exists, and its writes are in
    # a trial can be stopped after its run ended FINISHED but before Optuna was told: the run
    # follows the trial, FAILED
    fail_trials_of_workers(study, {me: reason}, RunFailer(tracker.tracking_uri, tracker.study_name))
    tracker.end_running_runs_of_trial(mine[-1].number, reason)
