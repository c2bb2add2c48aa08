"""A study opened for work: every input checked before anything is written, then the study DB,
the study lock and the MLflow records opened; and the loop that runs trials in this process."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import transformers
from rich.console import Console

from sweeper.cache import PrefixCache
from sweeper.identity import StudyIdentity
from sweeper.interrupts import stop_if_asked
from sweeper.mlflow_writer import ProcessWriter
from sweeper.progress import Progress
from sweeper.proxy_client import check_proxy, is_proxy_url
from sweeper.reachable import check_tracking_store
from sweeper.records import StudyAttr, Tag
from sweeper.recovery import RunFailer, StaleTrialCallback, fail_my_last_trial
from sweeper.report import Report
from sweeper.report.build import elapsed_seconds
from sweeper.runtime import Prepared, StudyRuntime, prepare
from sweeper.settings import Settings
from sweeper.storage import Heartbeat, StudyLock, make_storage
from sweeper.study import ArmQueue, finished_trials, open_study, run_trials
from sweeper.tracking import StudyTracker
from sweeper.trial import make_objective


@dataclass(frozen=True)
class Session:
    """A validated spec with its loaded model and data, and the study it runs, opened for work."""

    settings: Settings
    prepared: Prepared
    study: optuna.Study
    lock: StudyLock
    tracker: StudyTracker
    heartbeat: Heartbeat

    @property
    def fail_run(self) -> RunFailer:
        """What ends the MLflow run of a trial that another process failed."""
        return RunFailer(self.settings.tracking_uri, self.settings.spec.study.name)


@contextmanager
def open_session(
    settings: Settings, console: Console, sampler_salt: int, runs_trials: bool
) -> Iterator[Session]:
    """Check every input (raises UserError before anything is written), then open the study; at
    the end, the MLflow writes of this process are done.

    Where trials run in this process, the MLflow writer process starts first: it imports MLflow
    while the model loads (it writes nothing before the first trial), so the first trial's run
    exists as soon as the trial starts."""
    quiet_libraries()
    spec = settings.spec
    check_tracking_store(settings.tracking_uri)
    if is_proxy_url(settings.storage):
        check_proxy(settings.storage)  # in seconds, before the model and data load
    writer = ProcessWriter(settings.tracking_uri)
    if runs_trials:
        writer.start()
    try:
        prepared = prepare(spec, settings.device, console.print, cache_dir=settings.cache_dir)
        heartbeat = Heartbeat.from_env()
        on_stale = StaleTrialCallback(RunFailer(settings.tracking_uri, spec.study.name), heartbeat)
        storage = make_storage(settings.storage, heartbeat, on_stale)
        tracker = StudyTracker(settings.tracking_uri, spec.study.name, writer=writer)
        if runs_trials:
            writer.open()  # the store exists now (the experiment is in it)
        lock = StudyLock(storage, spec.study.name)
        identity = StudyIdentity.of(spec, prepared.data.raw, prepared.pretrained)
        study = open_study(spec, storage, lock, identity, sampler_salt)
        if settings.screen is not None:
            record_screen(study, settings.screen)
        with lock:  # workers starting together make one parent run
            tracker.describe_study(flat_spec(spec), spec.source_path)
        yield Session(settings, prepared, study, lock, tracker, heartbeat)
    finally:
        writer.close()


def run_here(session: Session, console: Console) -> None:
    """Run trials of the session's study in this process until it holds its total."""
    settings, study = session.settings, session.study
    progress = Progress(settings.trials, finished_trials(study), settings.spec.study.metric, console)
    cache = PrefixCache(settings.cache_dir) if settings.cache_dir is not None else None
    runtime = StudyRuntime(session.prepared, cache)
    console.print(
        f"study [bold]{study.study_name}[/bold]: {finished_trials(study)}/{settings.trials} trials "
        f"finished; {runtime.pretrained.family.name} with {runtime.pretrained.num_blocks} blocks on "
        f"{runtime.device}"
    )
    objective = make_objective(runtime, session.tracker, progress)

    def objective_counting_others(trial: optuna.Trial) -> float:
        progress.finished = finished_trials(study)  # other workers finish trials too
        return objective(trial)

    poll = min(5.0, session.heartbeat.interval)
    try:
        run_trials(
            study,
            objective_counting_others,
            settings.trials,
            session.lock,
            settings.timeout,
            poll,
            stop_if_asked,
            ArmQueue(settings.spec, settings.arms),
        )
    except KeyboardInterrupt as exc:
        fail_my_last_trial(study, session.tracker, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        session.tracker.close()  # its writes are done


def record_screen(study: optuna.Study, screen: dict) -> None:
    """The screen that kept the study, on it for its reports. One of the same candidates recorded
    before stays: its seconds are those of computing the features, where a later screen's may be
    those of reading them from the cache."""
    recorded = study.user_attrs.get(StudyAttr.SCREEN)
    if recorded is None or _screened(recorded) != _screened(screen):
        study.set_user_attr(StudyAttr.SCREEN, screen)


def _screened(screen: dict) -> set[str]:
    return {row["study"] for row in screen.get("ranking", [])}


def flat_spec(spec) -> dict[str, str]:
    """The spec as ``section.key`` → value text: the parent run's params (a study of one model,
    screened or not, has no candidates to list)."""
    flat = {}
    alone = {"model": {"candidates", "keep"}} if spec.model.candidates is None else {}
    for section, values in spec.model_dump(mode="json", exclude={"source_path": True, **alone}).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = str(value)
    return flat


def quiet_libraries() -> None:
    """Only warnings from the libraries: sweeper prints its own progress."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # it logs each database error with a traceback, then raises it as an MlflowException, which
    # sweeper reports in one line (a UserError, or a warning for a trial's run)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # transformers is a dependency; its logging API may move
        pass


def summarize_on_parent_run(tracker: StudyTracker, study: optuna.Study, report: Report | None = None) -> None:
    """The study's trial counts, elapsed time and decision on its parent run, so that the MLflow
    runs table shows what the study stands for."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    metrics = {f"trials_{state}": float(states.get(state, 0)) for state in ("complete", "pruned", "fail")}
    metrics["trials_finished"] = metrics["trials_complete"] + metrics["trials_pruned"]
    elapsed = elapsed_seconds(trials)
    if elapsed is not None:
        metrics["elapsed_seconds"] = elapsed
    tags = {}
    if report is not None:
        tags = {Tag.DECISION: report.decision, Tag.CONFIRMED: str(report.confirmed).lower()}
        if report.gain is not None:
            metrics["gain"] = report.gain
    tracker.summarize_study(metrics, tags)
