"""MLflow records: one experiment per study, a parent run per study, a child run per trial.

The only module that imports mlflow. A trial's run opens when the trial starts (params first),
logs one batch per epoch, and always ends: FINISHED (complete), KILLED (pruned) or FAILED.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sweeper.errors import UserError
from sweeper.redact import redact

ROLE_TAG = "sweeper.role"
STATUS_OF_STATE = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class StudyTracker:
    """The MLflow side of one study.

    Args:
        tracking_uri: where MLflow records (``sqlite:///mlflow.db``, ``http://host:5000``, ...).
        study_name: the Optuna study name, also the experiment name.

    Example:
        >>> tracker = StudyTracker("sqlite:///mlflow.db", "vader-minilm")
        >>> run = tracker.start_trial(0, {"unfrozen_blocks": 0}, {"sweeper.strategy": "feature_extraction"})
        >>> run.end("COMPLETE")
    """

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            self.experiment_id = self._experiment_id()
        except MlflowException as exc:
            raise UserError(
                f"MLflow tracking URI {redact(tracking_uri)} is not usable: {redact(str(exc))[:300]}"
            ) from None
        self._parent_run_id: str | None = None

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.study_name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.study_name, tags={"optuna.study": self.study_name})
        except MlflowException:  # another worker created it first
            return self.client.get_experiment_by_name(self.study_name).experiment_id

    @property
    def parent_run_id(self) -> str:
        """The study's parent run: found by tag, or created (and ended at once: it only groups)."""
        if self._parent_run_id is None:
            runs = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'study'", max_results=1
            )
            if runs:
                self._parent_run_id = runs[0].info.run_id
            else:
                run = self.client.create_run(
                    self.experiment_id,
                    run_name=f"study-{self.study_name}",
                    tags={ROLE_TAG: "study", "optuna.study": self.study_name},
                )
                self.client.set_terminated(run.info.run_id, "FINISHED")
                self._parent_run_id = run.info.run_id
        return self._parent_run_id

    def describe_study(self, params: dict[str, Any], spec_file: Path | None = None) -> None:
        """Log the spec on the parent run once (params are write-once in MLflow)."""
        run = self.client.get_run(self.parent_run_id)
        if run.data.params:
            return
        self.client.log_batch(
            self.parent_run_id, params=[Param(k, redact(str(v))[:6000]) for k, v in params.items()]
        )
        if spec_file is not None:
            self.client.log_artifact(self.parent_run_id, str(spec_file), artifact_path="spec")

    def start_trial(self, number: int, params: dict[str, Any], tags: dict[str, str]) -> TrialRun:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number:03d}",
            tags={
                MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                "optuna.study": self.study_name,
                "optuna.trial": str(number),
                **tags,
            },
        )
        trial_run = TrialRun(self.client, run.info.run_id)
        try:
            self.client.log_batch(trial_run.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        except Exception:
            trial_run.end("FAIL", reason="could not log the trial's params")
            raise
        return trial_run

    def end_running_runs_of_trial(self, number: int, reason: str) -> int:
        """End FAILED every run of trial ``number`` still RUNNING (its worker was stopped between
        creating the run and ending it); returns how many."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`optuna.trial` = '{number}' and attributes.status = 'RUNNING'",
        )
        for run in runs:
            TrialRun(self.client, run.info.run_id).end("FAIL", reason=reason)
        return len(runs)

    def log_report(self, folder: Path) -> None:
        self.client.log_artifacts(self.parent_run_id, str(folder), artifact_path="report")

    def runs_url(self, ui_address: str = "http://127.0.0.1:5000") -> str:
        return f"{ui_address}/#/experiments/{self.experiment_id}/runs"


class TrialRun:
    """One trial's MLflow run; ``end`` is idempotent so every exit path can call it."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._ended = False

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()])

    def end(self, state: str, metrics: dict[str, float] | None = None, reason: str | None = None) -> None:
        """End the run with the status that mirrors the Optuna trial state."""
        if self._ended:
            return
        self._ended = True
        try:
            now = int(time.time() * 1000)
            tags = [RunTag("optuna.state", state)]
            if reason:
                tags.append(RunTag("sweeper.reason", redact(reason)[:5000]))
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                tags=tags,
            )
        finally:
            self.client.set_terminated(self.run_id, STATUS_OF_STATE[state])


def mark_run_failed(tracking_uri: str, run_id: str, reason: str) -> bool:
    """End a trial's run FAILED with ``reason``, as its trial was failed by another process (its
    worker died, before ending the run or just after). Returns whether the run changed."""
    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_run(run_id).info.status == "FAILED":
        return False
    TrialRun(client, run_id).end("FAIL", reason=reason)
    return True
