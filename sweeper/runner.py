"""What the commands do, start to end: validate every input before anything is written, then run
the study's trials, then the report. The CLI parses arguments and calls one function here."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from rich.console import Console

from sweeper.backbones import Pretrained, load_pretrained
from sweeper.cache import PrefixCache, default_cache_dir
from sweeper.data import EncodedData, Splits, encode, load_raw, split_indices
from sweeper.errors import UserError
from sweeper.mlflow_writer import ProcessWriter
from sweeper.progress import Progress
from sweeper.redact import redact
from sweeper.report import report_study, spec_files, write_report, write_summary
from sweeper.spec import Spec, bounds, load_spec
from sweeper.storage import DEFAULT_STORAGE, Heartbeat, StudyLock, make_storage
from sweeper.study import (
    WORKER_ATTR,
    fail_trials_of_workers,
    finished_trials,
    open_study,
    run_trials,
    worker_id,
)
from sweeper.tracking import StudyTracker, end_running_runs_of, mark_run_failed
from sweeper.trial import StudyRuntime, make_objective
from sweeper.worker import (
    default_worker_count,
    run_workers,
    signals_interrupt,
    start_forkserver,
    stop_if_asked,
)

DEFAULT_TRACKING = "sqlite:///mlflow.db"
DEFAULT_SPEC = Path("studies") / "vader-minilm.toml"


@dataclass(frozen=True)
class Options:
    """Command-line settings; each falls back to its environment variable, then the spec."""

    storage: str | None = None
    tracking_uri: str | None = None
    trials: int | None = None
    timeout: float | None = None
    device: str | None = None
    out: Path | None = None
    workers: int | None = None
    cache_dir: Path | None = None
    no_cache: bool = False

    def storage_url(self) -> str:
        return self.storage or os.environ.get("SWEEPER_STORAGE") or DEFAULT_STORAGE

    def tracking(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING

    def prefix_cache(self) -> PrefixCache | None:
        """--no-cache: none; else --cache-dir, then $SWEEPER_CACHE_DIR, then ~/.cache/sweeper."""
        if self.no_cache:
            return None
        return PrefixCache(self.cache_dir or default_cache_dir())


def default_spec_path() -> Path:
    """studies/vader-minilm.toml in the working directory, else the one beside this checkout."""
    if DEFAULT_SPEC.is_file():
        return DEFAULT_SPEC
    beside = Path(__file__).resolve().parents[1] / DEFAULT_SPEC
    return beside if beside.is_file() else DEFAULT_SPEC


@dataclass
class _OpenStudy:
    """A validated spec with its loaded model and data, and the study it runs, opened for work."""

    spec: Spec
    pretrained: Pretrained
    data: EncodedData
    splits: Splits
    device: torch.device
    study: optuna.Study
    lock: StudyLock
    tracker: StudyTracker
    heartbeat: Heartbeat
    total: int


def run_study(spec_path: Path, options: Options, console: Console | None = None) -> dict:
    """Run the spec's study up to its total of finished trials, here or in ``options.workers``
    processes, then write the report."""
    console = console or Console(highlight=False, soft_wrap=True)
    _quiet_libraries()
    spec = load_spec(spec_path)
    workers = options.workers or 1
    if workers > 1:
        start_forkserver()  # it imports sweeper meanwhile
    opened = _open(spec, options, console, sampler_salt=0, runs_trials=workers == 1)
    _run(opened, spec_path, options, workers, console)
    return _finish(opened, options)


def run_worker(spec_path: Path, options: Options, console: Console | None = None) -> dict:
    """Join the spec's study (creating it if new) and run its trials until it holds its total of
    finished trials, in ``options.workers`` processes (default: one per visible GPU, else one)."""
    console = console or Console(highlight=False, soft_wrap=True)
    _quiet_libraries()
    spec = load_spec(spec_path)
    workers = options.workers or default_worker_count(options.device or spec.train.device)
    if workers > 1:
        start_forkserver()  # it imports sweeper meanwhile
    # parallel workers must not draw the same random start-up parameters
    opened = _open(spec, options, console, sampler_salt=os.getpid(), runs_trials=workers == 1)
    _run(opened, spec_path, options, workers, console)
    return {"study": spec.study.name, "finished": finished_trials(opened.study), "total": opened.total}


def _open(spec: Spec, options: Options, console: Console, sampler_salt: int, runs_trials: bool) -> _OpenStudy:
    """Check every input (raises UserError before anything is written), then open the study.

    Where trials run in this process, the MLflow writer process starts first: it imports MLflow
    while the model loads (it writes nothing before the first trial), so the first trial's run
    exists as soon as the trial starts."""
    tracking = options.tracking()
    writer = ProcessWriter(tracking)
    if runs_trials:
        writer.start()
    try:
        pretrained, data, splits = prepare(spec, console)
        device = pick_device(options.device or spec.train.device)
        heartbeat = Heartbeat.from_env()
        storage = make_storage(options.storage_url(), _run_marker(tracking, spec.study.name), heartbeat)
        tracker = StudyTracker(tracking, spec.study.name, writer=writer)
        if runs_trials:
            writer.open()  # the store exists now (the experiment is in it)
        lock = StudyLock(storage, spec.study.name)
        study = open_study(spec, storage, lock, sampler_salt)
        with lock:  # workers starting together make one parent run
            tracker.describe_study(_flat_spec(spec), spec.source_path)
    except BaseException:
        writer.close()
        raise
    total = options.trials or spec.budget.trials
    return _OpenStudy(spec, pretrained, data, splits, device, study, lock, tracker, heartbeat, total)


def _run(opened: _OpenStudy, spec_path: Path, options: Options, workers: int, console: Console) -> None:
    with signals_interrupt():
        if workers == 1:
            _run_here(opened, options, console)
        else:
            _run_processes(opened, spec_path, options, workers, console)


def _run_here(opened: _OpenStudy, options: Options, console: Console) -> None:
    spec, study = opened.spec, opened.study
    progress = Progress(opened.total, finished_trials(study), spec.study.metric, console)
    runtime = StudyRuntime(
        spec,
        opened.pretrained,
        opened.data,
        opened.splits,
        opened.device,
        opened.tracker,
        progress,
        cache=options.prefix_cache(),
    )
    console.print(
        f"study [bold]{spec.study.name}[/bold]: {finished_trials(study)}/{opened.total} trials "
        f"finished; {opened.pretrained.family.name} with {opened.pretrained.num_blocks} blocks on "
        f"{runtime.device}"
    )
    objective = make_objective(runtime)

    def objective_counting_others(trial: optuna.Trial) -> float:
        progress.finished = finished_trials(study)  # other workers finish trials too
        return objective(trial)

    poll = min(5.0, opened.heartbeat.interval)
    try:
        run_trials(
            study, objective_counting_others, opened.total, opened.lock, options.timeout, poll, stop_if_asked
        )
    except KeyboardInterrupt as exc:
        _end_last_trial_here(opened, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        opened.tracker.close()  # its writes are done


def _end_last_trial_here(opened: _OpenStudy, reason: str) -> None:
    """An interrupt can land between the steps that start or end a trial and its run: whatever of
    this worker's last trial is still running, end it failed."""
    mine = [
        t for t in opened.study.get_trials(deepcopy=False) if t.user_attrs.get(WORKER_ATTR) == worker_id()
    ]
    if not mine:
        return
    opened.tracker.flush()  # the run of the last trial exists, and its writes are in
    # a trial can be stopped after its run ended FINISHED but before Optuna was told: the run
    # follows the trial, FAILED
    mark = _run_marker(opened.tracker.tracking_uri, opened.spec.study.name)
    fail_trials_of_workers(opened.study, {worker_id(): reason}, on_failed=mark)
    opened.tracker.end_running_runs_of_trial(mine[-1].number, reason)


def _run_processes(opened: _OpenStudy, spec_path: Path, options: Options, count: int, console) -> None:
    env = {  # the workers' settings travel in their environment: no password in `ps`
        "SWEEPER_STORAGE": absolute_sqlite(options.storage_url()),
        "MLFLOW_TRACKING_URI": absolute_sqlite(options.tracking()),
    }
    argv = [str(spec_path.resolve()), "--trials", str(opened.total)]
    if options.timeout:
        argv += ["--timeout", str(options.timeout)]
    if options.no_cache:
        argv += ["--no-cache"]
    elif options.cache_dir:
        argv += ["--cache-dir", str(options.cache_dir.resolve())]
    device = options.device or opened.spec.train.device
    run_workers(
        opened.study,
        opened.total,
        count,
        device,
        argv,
        env,
        _run_marker(options.tracking(), opened.spec.study.name),
        console,
    )


def _run_marker(tracking_uri: str, study_name: str):
    """What marks the MLflow run of a trial failed by another process (its worker died)."""

    def mark(trial, reason: str) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            mark_run_failed(tracking_uri, run_id, reason)
        else:  # the worker died before the run's id reached the trial (the run may exist)
            end_running_runs_of(tracking_uri, study_name, trial.number, reason)

    return mark


def prepare(spec: Spec, console: Console | None = None):
    """Load data and model and check them against the spec; raises UserError, writes nothing."""
    raw = load_raw(spec)
    if console:
        console.print(f"data: {raw.description}, {len(raw.labels)} examples, {len(raw.classes)} classes")
    pretrained = load_pretrained(spec.model, spec.resolve, spec.data.image_size)
    check_search_against_model(spec, pretrained)
    data = encode(raw, pretrained)
    splits = split_indices(raw.labels, spec.data.val_fraction, spec.data.test_fraction, spec.study.seed)
    return pretrained, data, splits


def check_search_against_model(spec: Spec, pretrained: Pretrained) -> None:
    n = pretrained.num_blocks
    for key in ("unfrozen_blocks", "blocks_per_stage"):
        value = getattr(spec.search, key)
        if bounds(value)[1] > n:
            shown = list(value) if isinstance(value, tuple) else value
            raise UserError(
                f"{spec.source_path}: [search] {key} is {shown}, but {spec.model.name} has {n} "
                f"blocks; use 0–{n}"
                if key == "unfrozen_blocks"
                else f"{spec.source_path}: [search] {key} is {shown}, but {spec.model.name} has {n} "
                f"blocks; use 1–{n}"
            )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device is {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device is {name!r}, but no CUDA GPU is visible; use auto or cpu")
    return device


def _finish(opened: _OpenStudy, options: Options) -> dict:
    # the search-only report (with confirmation runs only if already cached): `report` confirms
    raw = opened.data.raw
    report = report_study(opened.study, opened.spec, raw.labels, raw.classes, opened.splits)
    out = options.out or Path("reports") / opened.spec.study.name
    write_report(report, out, opened.study)
    opened.tracker.log_report(out)
    return {"report": report, "out": out, "tracker": opened.tracker}


def make_report(spec_paths: list[Path], options: Options, console: Console | None = None) -> dict:
    """Confirm and report one study; for several specs (or a folder of them) also one table
    across them, with report.json as a list, in ``options.out`` (default reports/)."""
    _quiet_libraries()
    paths = spec_files(list(spec_paths))
    if len(spec_paths) > 1 or spec_paths[0].is_dir():
        out = options.out or Path("reports")
        outcomes = [_report_one(path, options, console, out / load_spec(path).study.name) for path in paths]
        reports = [outcome["report"] for outcome in outcomes]
        write_summary(reports, out, [f"{o['out'].relative_to(out)}/report.html" for o in outcomes])
        return {"reports": reports, "out": out, "tracker": outcomes[-1]["tracker"]}
    return _report_one(paths[0], options, console, options.out)


def _report_one(spec_path: Path, options: Options, console: Console | None, out: Path | None) -> dict:
    spec = load_spec(spec_path)
    storage = make_storage(options.storage_url())
    try:
        study = optuna.load_study(study_name=spec.study.name, storage=storage)
    except KeyError:
        raise UserError(
            f"no study {spec.study.name!r} in {redact(options.storage_url())}; run "
            f"`python -m sweeper study {spec_path}` first"
        ) from None
    raw = load_raw(spec)
    splits = split_indices(raw.labels, spec.data.val_fraction, spec.data.test_fraction, spec.study.seed)
    tracker = StudyTracker(options.tracking(), spec.study.name)
    prepared: list = []

    def runtime() -> StudyRuntime:  # model and data load once; each call an empty prefix cache
        if not prepared:
            prepared.append(prepare(spec))
        device = pick_device(options.device or spec.train.device)
        # in memory, not the disk cache: each arm computes its own prefix states, so its cost is
        # that of a run from scratch whatever the search left on disk (--no-cache: none at all)
        cache = None if options.no_cache else PrefixCache(None)
        return StudyRuntime(spec, *prepared[0], device, tracker, cache=cache)

    say = console.print if console else lambda _: None
    report = report_study(study, spec, raw.labels, raw.classes, splits, runtime, say=say)
    out = out or Path("reports") / spec.study.name
    write_report(report, out, study)
    tracker.log_report(out)
    return {"report": report, "out": out, "tracker": tracker}


def absolute_sqlite(url: str) -> str:
    """A relative sqlite:/// URL made absolute, so that it names the same file from anywhere."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url.removeprefix(prefix)).resolve())
    return url


def _flat_spec(spec: Spec) -> dict[str, str]:
    flat = {}
    for section, values in spec.model_dump(mode="json", exclude={"source_path"}).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = str(value)
    return flat


def _quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # transformers is a dependency; its logging API may move
        pass
