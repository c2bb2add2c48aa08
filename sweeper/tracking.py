"""MLflow records: one experiment per study, a parent run per study, a child run per trial.

With ``mlflow_writer`` (which makes the trial runs' writes), the only modules that import mlflow. A
trial's run opens when the trial starts and always ends: FINISHED (complete), KILLED (pruned) or
FAILED. Its params and epoch metrics are written in batches: at most one per epoch, and one at the
end for all the epochs of a short trial.

A trial's writes go, in order, to a child process (``mlflow_writer``), so the trial never waits on
the tracking store (each write is a database transaction or an HTTP call) and the MLflow client
never competes with the training loop for the GIL. ``flush`` waits for them and ``close`` ends
the child; the study and worker loops close before they return. An MLflow error there is logged,
never raised into the trial: the study is the record of the result, the run its mirror.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sweeper.errors import UserError
from sweeper.mlflow_writer import PENDING, DirectWriter, MlflowWriteError, ProcessWriter
from sweeper.records import Tag
from sweeper.redact import redact

log = logging.getLogger(__name__)

# epoch metrics wait at most this long before they are written: a trial of short epochs makes
# one write at its end instead of one per epoch, a trial of long epochs still writes every epoch
LOG_EVERY_SECONDS = 5.0
STATUS_OF_STATE = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

Writer = ProcessWriter | DirectWriter


class TrackingRefused(Exception):
    """MLflow's store refused a write of the study's own run; the message is its reason."""


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

    def __init__(self, tracking_uri: str, study_name: str, writer: ProcessWriter | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            self.experiment_id = self._experiment_id()
        except MlflowException as exc:
            raise UserError(
                f"MLflow tracking URI {redact(tracking_uri)} is not usable: {_reason(exc)}"
            ) from None
        self._parent_run_id: str | None = None
        # its child starts with the first trial, unless the caller started it already
        self._writer = writer or ProcessWriter(tracking_uri)
        weakref.finalize(self, self._writer.close)  # at the latest when the interpreter exits

    def flush(self) -> None:
        """Wait until every write sent so far is done (or has failed and been logged)."""
        try:
            self._writer.flush()
        except MlflowWriteError as exc:
            log.warning("MLflow writes may be lost: %s", redact(str(exc))[:300])

    def close(self) -> None:
        """Finish the writes sent so far and stop the writer (a later trial starts another)."""
        self._writer.close()

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.study_name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.study_name, tags={Tag.STUDY: self.study_name})
        except MlflowException:
            found = self.client.get_experiment_by_name(self.study_name)
            if found is None:  # not another worker first: the store refused it (a full disk, ...)
                raise
            return found.experiment_id

    @property
    def parent_run_id(self) -> str:
        """The study's parent run: found by tag, or created (and ended at once: it only groups)."""
        if self._parent_run_id is None:
            runs = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{Tag.ROLE}` = 'study'", max_results=1
            )
            if runs:
                self._parent_run_id = runs[0].info.run_id
            else:
                run = self.client.create_run(
                    self.experiment_id,
                    run_name=f"study-{self.study_name}",
                    tags={Tag.ROLE: "study", Tag.STUDY: self.study_name},
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

    def start_trial(
        self,
        number: int,
        params: dict[str, Any],
        tags: dict[str, str],
        on_created: Callable[[str], None] | None = None,
    ) -> TrialRun:
        """Open trial ``number``'s run in the background; ``on_created(run_id)`` runs in a
        background thread once it exists. The returned run takes writes at once: they follow the
        creation, in order."""
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            Tag.STUDY: self.study_name,
            Tag.TRIAL: str(number),
            **tags,
        }

        # the params go with the run's first write of metrics (at the latest, with its end)
        run = TrialRun(
            self._writer,
            PENDING + uuid.uuid4().hex,
            Future(),
            params=[(k, str(v)) for k, v in params.items()],
            named=f"trial {number}'s run",
        )
        created = self._writer.send("create", run.key, (self.experiment_id, f"trial-{number:03d}", tags))
        created.add_done_callback(functools.partial(run._on_created, on_created))
        return run

    def end_running_runs_of_trial(self, number: int, reason: str) -> int:
        """End FAILED every run of trial ``number`` still RUNNING (its worker was stopped between
        creating the run and ending it); returns how many."""
        return _end_running_runs(self.client, self.experiment_id, number, reason)

    def log_report(self, folder: Path) -> None:
        self.client.log_artifacts(self.parent_run_id, str(folder), artifact_path="report")

    def summarize_study(self, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """The study's figures on its parent run, where the runs table shows their latest values;
        the run's end moves to now, so that its duration there is the study's so far."""
        now = int(time.time() * 1000)
        try:
            self.client.log_batch(
                self.parent_run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                tags=[RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()],
            )
            self.client.set_terminated(self.parent_run_id, "FINISHED", end_time=now)
        except MlflowException as exc:  # e.g. a full disk under a SQLite store
            raise TrackingRefused(_reason(exc)) from None

    def runs_url(self, ui_address: str = "http://127.0.0.1:5000") -> str:
        return f"{ui_address}/#/experiments/{self.experiment_id}/runs"


class TrialRun:
    """One trial's MLflow run; ``end`` is idempotent so every exit path can call it.

    Args:
        writer: what makes the writes (a child process, or this thread for ``existing`` runs).
        key: the run's name for the writer, given before the run exists (its id once it does).
        ready: the run's id, or the future of it (``None`` if the run could not be created).
        params: written with the run's first metrics.
        named: what a warning calls it ("trial 12's run").
    """

    def __init__(
        self,
        writer: Writer,
        key: str,
        ready: str | Future,
        params: list[tuple[str, str]] | None = None,
        named: str = "a trial's run",
    ) -> None:
        self.key = key
        self.named = named
        self._writer = writer
        self._ready = ready
        self._ended = False
        self._warned = False
        self._pending: list[tuple[str, float, int, int]] = []
        self._tags: list[tuple[str, str]] = []  # go with the run's next write
        self._params = params or []
        self._written_at = time.monotonic()

    @classmethod
    def existing(cls, client: MlflowClient, run_id: str) -> TrialRun:
        """A run that exists already, written at once in this thread (errors are raised)."""
        return cls(DirectWriter(client), run_id, run_id, named=f"run {run_id}")

    def created(self) -> str | None:
        """The run's id once it exists and ``on_created`` has run; ``None`` when it could not be
        created (already logged)."""
        if isinstance(self._ready, str):
            return self._ready
        return self._ready.result()

    def _on_created(self, on_created: Callable[[str], None] | None, created: Future) -> None:
        try:
            run_id = created.result()
        except Exception as exc:
            self._warn(exc)
            self._ready.set_result(None)
            return
        self.key = run_id  # later writes name the run by its id: a writer started since knows no key
        try:
            if on_created is not None:
                on_created(run_id)
        except Exception as exc:
            log.warning("MLflow run %s could not be noted on its trial: %s", run_id, redact(str(exc))[:300])
        finally:
            self._ready.set_result(run_id)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        """Record one epoch's metrics (with their time and step); they are written together with
        the next ones when the last write was under ``LOG_EVERY_SECONDS`` ago."""
        now = int(time.time() * 1000)
        self._pending += [(k, float(v), now, step) for k, v in metrics.items()]
        if time.monotonic() - self._written_at >= LOG_EVERY_SECONDS:
            batch, self._pending = self._pending, []
            params, self._params = self._params, []
            tags, self._tags = self._tags, []
            self._written_at = time.monotonic()
            self._send("log", (batch, params, tags))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags written with the run's next write (its next epochs' batch, at the latest its end):
        one write fewer per trial for the child."""
        self._tags += [(k, redact(str(v))[:5000]) for k, v in tags.items()]

    def end(self, state: str, metrics: dict[str, float] | None = None, reason: str | None = None) -> None:
        """End the run with the status that mirrors the Optuna trial state."""
        if self._ended:
            return
        self._ended = True
        now = int(time.time() * 1000)
        batch = self._pending + [(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        params, self._pending, self._params = self._params, [], []
        tags, self._tags = [*self._tags, (Tag.STATE, state)], []
        if reason:
            tags.append((Tag.REASON, redact(reason)[:5000]))
        self._send("end", (batch, params, tags, STATUS_OF_STATE[state]))

    def _send(self, op: str, args: tuple) -> None:
        self._writer.send(op, self.key, args).add_done_callback(self._check)

    def _check(self, done: Future) -> None:
        if done.exception() is not None:
            self._warn(done.exception())

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("MLflow did not record %s: %s", self.named, _reason(exc))


def _end_running_runs(client: MlflowClient, experiment_id: str, number: int, reason: str) -> int:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.TRIAL}` = '{number}' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        TrialRun.existing(client, run.info.run_id).end("FAIL", reason=reason)
    return len(runs)


def end_running_runs_of(tracking_uri: str, study_name: str, number: int, reason: str) -> int:
    """End FAILED the runs of trial ``number`` of a study still RUNNING, found by their tags: for a
    trial whose worker died before the run's id reached the trial. Returns how many."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    return 0 if experiment is None else _end_running_runs(client, experiment.experiment_id, number, reason)


def mark_run_failed(tracking_uri: str, run_id: str, reason: str) -> bool:
    """End a trial's run FAILED with ``reason``, as its trial was failed by another process (its
    worker died, before ending the run or just after). Returns whether the run changed."""
    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_run(run_id).info.status == "FAILED":
        return False
    TrialRun.existing(client, run_id).end("FAIL", reason=reason)
    return True


def _reason(exc: Exception) -> str:
    """The line of an MLflow store's error that says what went wrong (its SQL and SQLAlchemy's
    notes left out), redacted and cut to 300 characters: what sweeper's messages quote."""
    lines = [line for line in str(exc).splitlines() if line.strip() and "(raised as a result of" not in line]
    return redact(lines[0] if lines else type(exc).__name__)[:300]
