"""The commands, start to end: ``study``, ``worker`` and ``report``. Each resolves its settings
once, checks every input before anything is written, does its work through the layers below and
returns a typed outcome; the CLI parses arguments, calls one of these and prints the outcome.

Exit codes (`exit_code`): 0 done, 1 stopped (trials keep failing, workers died, the storage proxy
stopped answering, a full disk refused the report), 2 bad input, 128 + N when signal N
interrupted it (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from rich.console import Console
from rich.markup import escape

from sweeper.cache import PrefixCache
from sweeper.confirm import RuntimeFactory
from sweeper.errors import UserError
from sweeper.identity import StudyIdentity
from sweeper.identity import check as check_identity
from sweeper.interrupts import signals_interrupt
from sweeper.outcomes import (
    CommandInterrupted,
    Outcome,
    ReportInterrupted,
    ReportNotRecorded,
    ReportOutcome,
    ScreenedOutcome,
    StudyOutcome,
    Where,
    WorkerOutcome,
)
from sweeper.proxy_client import ProxyLost, proxy_lost
from sweeper.reachable import check_tracking_store, study_exists
from sweeper.redact import redact
from sweeper.report import (
    Report,
    ReportNotWritten,
    check_report_folder,
    report_study,
    write_report,
    write_summary,
)
from sweeper.runtime import Prepared, StudyRuntime, prepare
from sweeper.screening import report_settings, studied_candidates, study_screened
from sweeper.session import Session, open_session, quiet_libraries, run_here, summarize_on_parent_run
from sweeper.settings import Options, Settings, default_spec_path, resolve
from sweeper.spec import load_spec
from sweeper.storage import StudyLock, make_storage
from sweeper.study import TrialsKeepFailing, finished_trials
from sweeper.tracking import StudyTracker, TrackingRefused
from sweeper.workers import WorkersStopped, default_worker_count, run_workers, start_forkserver


def run_study(
    spec_path: Path | None, options: Options, console: Console | None = None
) -> StudyOutcome | ScreenedOutcome:
    """Run the spec's study (default: studies/vader-minilm.toml) up to its total of finished
    trials, here or in ``--workers`` processes, then write the search-only report. With [model]
    candidates: screen them first, then run a study of each one kept (`screening`)."""
    console = console or Console(highlight=False, soft_wrap=True)
    quiet_libraries()
    spec = load_spec(spec_path or default_spec_path())
    if spec.model.candidates is not None:
        return study_screened(spec, options, console, lambda settings: _study(settings, console))
    return _study(resolve(options, spec), console)


def _study(settings: Settings, console: Console) -> StudyOutcome:
    check_report_folder(settings.out)
    workers = settings.workers or 1
    if workers > 1:
        start_forkserver()  # it imports sweeper meanwhile
    with open_session(settings, console, sampler_salt=0, runs_trials=workers == 1) as session:
        _run_trials(session, workers, console)
        # the search-only report (with confirmation runs only if already cached): `report` confirms
        data = session.prepared.data.raw
        report = report_study(
            session.study,
            settings.spec,
            data.labels,
            data.classes,
            session.prepared.splits,
            dropped=data.dropped,
        )
        report, _ = write_report(report, settings.out, session.study)
        _record(report, settings.out, session.study, session.tracker)
        return StudyOutcome(report, _where(settings, settings.out, session.tracker))


def run_worker(
    spec_path: Path | None, options: Options, console: Console | None = None
) -> WorkerOutcome | ScreenedOutcome:
    """Join the spec's study (creating it if new) and run its trials until it holds its total of
    finished trials, in ``--workers`` processes (default: one per visible GPU, else one). With
    [model] candidates: join, in turn, each candidate's study that `study` created after its screen."""
    console = console or Console(highlight=False, soft_wrap=True)
    quiet_libraries()
    spec = load_spec(spec_path or default_spec_path())
    if spec.model.candidates is not None:
        return ScreenedOutcome(None, [work(s, console) for s in studied_candidates(options, spec)])
    return work(resolve(options, spec), console)


def work(settings: Settings, console: Console) -> WorkerOutcome:
    """The worker command on resolved settings: what each ``--workers`` process runs too."""
    workers = settings.workers or default_worker_count(settings.device)
    if workers > 1:
        start_forkserver()
    # parallel workers must not draw the same random start-up parameters
    with open_session(settings, console, sampler_salt=os.getpid(), runs_trials=workers == 1) as session:
        _run_trials(session, workers, console)
        try:
            summarize_on_parent_run(session.tracker, session.study)
        except TrackingRefused as exc:  # the trials are done and in the study DB: a worker says so
            console.print(
                f"warning: MLflow did not record the study's figures on its parent run: {escape(str(exc))}"
            )
        return WorkerOutcome(settings.spec.study.name, finished_trials(session.study), settings.trials)


def _run_trials(session: Session, workers: int, console: Console) -> None:
    try:
        with signals_interrupt():
            if workers == 1:
                run_here(session, console)
            else:
                run_workers(
                    session.study, session.settings, workers, work_in_process, session.fail_run, console
                )
    except Exception as exc:  # the storage proxy gone: one line, not gRPC's and Optuna's traceback
        lost = proxy_lost(exc, session.settings.storage)
        if lost is None:
            raise
        raise lost from None


def work_in_process(settings: Settings) -> None:
    """The body of each ``--workers`` process: the worker command, its outcome and exit code."""
    console = Console(highlight=False, soft_wrap=True)
    sys.exit(exit_code(lambda: work(settings, console), console))


def make_report(spec_paths: list[Path], options: Options, console: Console | None = None) -> ReportOutcome:
    """Confirm and report each study (default: studies/vader-minilm.toml); several specs, or a
    folder of them, also get one table across them, with report.json as a list, in ``--out``
    (default reports/). A spec with [model] candidates stands for its candidates' studies in the
    study DB. Every input is checked, for every study, before anything is written."""
    console = console or Console(highlight=False, soft_wrap=True)
    quiet_libraries()
    with signals_interrupt():
        several, table = report_settings(spec_paths or [default_spec_path()], options)
        if not table:
            settings = several[0]
            _check_report_inputs(settings)
            report, tracker = _report_one(settings, console)
            return ReportOutcome([report], _where(settings, settings.out, tracker), several=False)
        out = options.out or Path("reports")
        check_report_folder(out, summary=True)
        for settings in several:
            _check_report_inputs(settings)
        # every study's data and weights checked (and loaded once) before any report
        prepared = [_prepared_and_checked(settings, _load_study(settings)) for settings in several]
        reports, links, where = [], [], None
        for settings, loaded in zip(several, prepared, strict=True):
            report, tracker = _report_one(settings, console, loaded)
            reports.append(report)
            links.append(f"{settings.spec.study.name}/report.html")
            where = _where(settings, out, tracker)
        write_summary(reports, out, links)
        return ReportOutcome(reports, where, several=True)


def _check_report_inputs(settings: Settings) -> None:
    """The report folder, MLflow's store and the study, checked read-only: nothing is written
    (not even an empty study DB) when one of them is wrong."""
    check_report_folder(settings.out)
    check_tracking_store(settings.tracking_uri)
    if not study_exists(settings.storage, settings.spec.study.name):
        raise UserError(
            f"no study {settings.spec.study.name!r} in {redact(settings.storage)}; run "
            f"`python -m sweeper study {settings.spec.source_path}` first"
        )


def _load_study(settings: Settings, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    storage = storage or make_storage(settings.storage)
    return optuna.load_study(study_name=settings.spec.study.name, storage=storage)


def _prepared_and_checked(settings: Settings, study: optuna.Study) -> Prepared:
    """The spec's model and data, loaded, and checked to be those the study's trials ran on (its
    identity): a report on other data or weights is refused before any confirmation run trains."""
    spec = settings.spec
    prepared = prepare(spec, settings.device, cache_dir=settings.cache_dir)
    check_identity(study, spec, StudyIdentity.of(spec, prepared.data.raw, prepared.pretrained))
    return prepared


def _report_one(
    settings: Settings, console: Console, prepared: Prepared | None = None
) -> tuple[Report, StudyTracker]:
    spec, written = settings.spec, False
    storage = make_storage(settings.storage)
    study = _load_study(settings, storage)
    try:
        prepared = prepared or _prepared_and_checked(settings, study)
        raw, splits = prepared.data.raw, prepared.splits
        with _report_lock(storage, spec.study.name, console):
            tracker = StudyTracker(settings.tracking_uri, spec.study.name)
            runtimes = _runtimes(settings, prepared)
            report = report_study(
                study, spec, raw.labels, raw.classes, splits, runtimes, console.print, dropped=raw.dropped
            )
            report, _ = write_report(report, settings.out, study)
            written = True
            _record(report, settings.out, study, tracker)
    except KeyboardInterrupt as exc:
        raise ReportInterrupted(settings.out, written, getattr(exc, "exit_code", 130)) from None
    return report, tracker


@contextmanager
def _report_lock(storage: optuna.storages.RDBStorage, name: str, console: Console) -> Iterator[None]:
    """One `report` of a study at a time, so that a seed is confirmed once: a second one waits,
    then finds the first one's confirmation runs cached. The study's own lock is another one, so
    that its workers go on meanwhile."""
    lock = StudyLock(storage, name, scope="report")
    if not lock.acquire(wait=False):
        console.print(
            f"waiting: another `report` of study {name!r} is running; this one goes on when it ends, "
            "and reuses its confirmation runs"
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _runtimes(settings: Settings, prepared: Prepared) -> RuntimeFactory:
    """Runtimes for the confirmation runs, on the model and data loaded once: each runtime has an
    empty frozen-prefix cache in memory, not the disk cache, so that each arm computes its own
    prefix states and its cost is that of a run from scratch, whatever the search left on disk
    (--no-cache: none at all)."""

    def runtime() -> StudyRuntime:
        return StudyRuntime(prepared, PrefixCache(None) if settings.cache_dir is not None else None)

    return runtime


def _record(report: Report, out: Path, study: optuna.Study, tracker: StudyTracker) -> None:
    """The report folder as an artifact of the parent run, and the report's figures on it."""
    try:
        tracker.log_report(out)
    except OSError as exc:  # MLflow copies the folder into its artifact store, maybe on a full disk
        raise ReportNotRecorded(out, exc) from None
    try:
        summarize_on_parent_run(tracker, study, report)
    except TrackingRefused as exc:  # MLflow's database on a full disk, ...
        raise ReportNotRecorded(out, str(exc)) from None


def _where(settings: Settings, reports: Path, tracker: StudyTracker) -> Where:
    tracking = settings.tracking_uri
    ui = "http://127.0.0.1:5000" if tracking.startswith("sqlite:") else redact(tracking).rstrip("/")
    return Where(reports, settings.storage, tracking, tracker.runs_url(ui))


def exit_code(command: Callable[[], Outcome], console: Console) -> int:
    """Run a command, print its outcome, and say how it ended: one message, no traceback."""
    try:
        outcome = command()
    except UserError as exc:
        console.print(f"[red]error:[/red] {escape(redact(str(exc)))}")
        return exc.exit_code
    except (ReportNotWritten, ReportNotRecorded) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return exc.exit_code
    except (TrialsKeepFailing, WorkersStopped, ProxyLost) as exc:
        console.print(f"[red]stopped:[/red] {escape(redact(str(exc)))}")
        return 1
    except KeyboardInterrupt as exc:  # `report` and the screen say what they kept; trials, what they ended
        ended = "running trials were marked failed and their runs ended"
        console.print(
            f"[red]interrupted[/red]: {escape(str(exc) if isinstance(exc, CommandInterrupted) else ended)}"
        )
        return getattr(exc, "exit_code", 130)
    for line in outcome.lines():
        console.print(line)
    return 0
