"""What the commands do, start to end: validate every input before anything is written, then run
the study's trials, then the report. The CLI parses arguments and calls one function here."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from rich.console import Console

from sweeper.backbones import Pretrained, load_pretrained
from sweeper.data import encode, load_raw, split_indices
from sweeper.errors import UserError
from sweeper.progress import Progress
from sweeper.redact import redact
from sweeper.report import build_report, write_report
from sweeper.spec import Spec, bounds, load_spec
from sweeper.study import DEFAULT_STORAGE, finished_trials, make_storage, open_study, run_trials
from sweeper.tracking import StudyTracker
from sweeper.trial import StudyRuntime, make_objective

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

    def storage_url(self) -> str:
        return self.storage or os.environ.get("SWEEPER_STORAGE") or DEFAULT_STORAGE

    def tracking(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING


def default_spec_path() -> Path:
    """studies/vader-minilm.toml in the working directory, else the one beside this checkout."""
    if DEFAULT_SPEC.is_file():
        return DEFAULT_SPEC
    beside = Path(__file__).resolve().parents[1] / DEFAULT_SPEC
    return beside if beside.is_file() else DEFAULT_SPEC


def run_study(spec_path: Path, options: Options, console: Console | None = None) -> dict:
    """Run the spec's study up to its total of finished trials, then write the report."""
    console = console or Console(highlight=False, soft_wrap=True)
    _quiet_libraries()
    spec = load_spec(spec_path)
    pretrained, data, splits = prepare(spec, console)
    storage = make_storage(options.storage_url())
    tracker = StudyTracker(options.tracking(), spec.study.name)
    study = open_study(spec, storage)
    tracker.describe_study(_flat_spec(spec), spec.source_path)
    total = options.trials or spec.budget.trials
    runtime = StudyRuntime(
        spec,
        pretrained,
        data,
        splits,
        pick_device(options.device or spec.train.device),
        tracker,
        Progress(total, finished_trials(study), spec.study.metric, console),
    )
    console.print(
        f"study [bold]{spec.study.name}[/bold]: {finished_trials(study)}/{total} trials finished; "
        f"{pretrained.family.name} with {pretrained.num_blocks} blocks on {runtime.device}"
    )
    run_trials(study, make_objective(runtime), total, options.timeout)
    return _finish(spec, study, tracker, runtime, options)


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


def _finish(spec: Spec, study, tracker: StudyTracker, runtime: StudyRuntime, options: Options) -> dict:
    summary = dataset_summary(runtime.data.raw.labels, runtime.splits, runtime.num_classes)
    report = build_report(study, spec, summary)
    out = options.out or Path("reports") / spec.study.name
    write_report(report, out)
    tracker.log_report(out)
    return {"report": report, "out": out, "tracker": tracker}


def dataset_summary(labels: list[int], splits, num_classes: int) -> dict:
    train_labels = np.asarray(labels)[splits.train]
    counts = np.bincount(train_labels, minlength=num_classes)
    return {"train_examples": int(len(train_labels)), "per_class_min": int(counts.min())}


def make_report(spec_path: Path, options: Options) -> dict:
    """Rebuild the report of a study that has run (some of) its trials."""
    _quiet_libraries()
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
    report = build_report(study, spec, dataset_summary(raw.labels, splits, len(raw.classes)))
    out = options.out or Path("reports") / spec.study.name
    write_report(report, out)
    tracker = StudyTracker(options.tracking(), spec.study.name)
    tracker.log_report(out)
    return {"report": report, "out": out, "tracker": tracker}


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
