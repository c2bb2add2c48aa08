"""The Optuna side of a study: storage, sampler, pruner, enqueued baselines, and the run loop that
stops at the study's total of finished trials (complete + pruned), however many processes run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sweeper.errors import UserError
from sweeper.redact import redact
from sweeper.search_space import baseline_configs, max_total_epochs
from sweeper.spec import Spec

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
FINGERPRINT_ATTR = "sweeper.fingerprint"
DEFAULT_STORAGE = "sqlite:///sweeper.db"


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage fit for its backend; an unusable URL is one UserError (password hidden)."""
    shown = redact(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(
            f"storage URL {shown!r} is not a database URL; use sqlite:///path.db or "
            "postgresql+psycopg://user@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_folder(parsed.database, shown)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2}
        if parsed.get_backend_name() == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as exc:
        first = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        raise UserError(f"storage URL {shown!r} is not reachable: {first}") from None


def _check_sqlite_folder(database: str | None, shown: str) -> None:
    if not database or database == ":memory:":
        raise UserError(f"storage URL {shown!r} names no file; use sqlite:///path/to/study.db")
    folder = Path(database).expanduser().resolve().parent
    if not folder.is_dir():
        raise UserError(f"storage URL {shown!r}: folder {folder} does not exist")


def make_pruner(spec: Spec) -> optuna.pruners.BasePruner:
    if spec.budget.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.budget.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=max_total_epochs(spec.search), reduction_factor=3
    )


def open_study(spec: Spec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create or continue the spec's study; refuse one whose search space has changed."""
    existing = _existing_trial_count(storage, spec.study.name)
    sampler = optuna.samplers.TPESampler(
        # a continued study must not replay the random start-up of the first run
        seed=spec.study.seed + existing,
        n_startup_trials=max(3, min(10, spec.budget.trials // 4)),
        constant_liar=True,
    )
    study = optuna.create_study(
        study_name=spec.study.name,
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(spec),
        direction=spec.study.direction,
        load_if_exists=True,
    )
    _check_fingerprint(study, spec)
    if not study.trials:
        for config in baseline_configs(spec.search):
            study.enqueue_trial(
                config.params(),
                user_attrs={"sweeper.baseline": config.strategy},
                skip_if_exists=True,
            )
    return study


def _existing_trial_count(storage, name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _check_fingerprint(study: optuna.Study, spec: Spec) -> None:
    wanted = json.loads(json.dumps(spec.search_fingerprint()))
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        study.set_user_attr(FINGERPRINT_ATTR, wanted)
        return
    if stored != wanted:
        changed = _describe_changes(stored, wanted)
        raise UserError(
            f"{spec.source_path}: study {spec.study.name!r} was created with another search space "
            f"({changed}); its trials would not be comparable. Restore the spec, or give "
            "[study] name a new value to start a new study"
        )


def _describe_changes(stored: dict, wanted: dict) -> str:
    changes = []
    for section in sorted(set(stored) | set(wanted)):
        old, new = stored.get(section), wanted.get(section)
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    changes.append(f"[{section}] {key} was {old.get(key)!r}, now {new.get(key)!r}")
        elif old != new:
            changes.append(f"{section} was {old!r}, now {new!r}")
    return "; ".join(changes)


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class _StopAfterRepeatedFailures:
    """A study whose every trial fails would loop forever: stop after a run of failures."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.last_reason = ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.in_a_row += 1
            self.last_reason = trial.user_attrs.get("fail_reason", "")
            if self.in_a_row >= self.limit:
                study.stop()
        else:
            self.in_a_row = 0


def run_trials(study: optuna.Study, objective, total_trials: int, timeout: float | None) -> int:
    """Run trials until the study holds ``total_trials`` finished ones; returns how many ran here."""
    if finished_trials(study) >= total_trials:
        return 0
    failures = _StopAfterRepeatedFailures(limit=3)
    before = len(study.trials)
    study.optimize(
        objective,
        timeout=timeout,
        catch=(Exception,),
        callbacks=[MaxTrialsCallback(total_trials, states=FINISHED), failures],
        gc_after_trial=True,
    )
    if failures.in_a_row >= failures.limit:
        raise TrialsKeepFailing(failures.limit, failures.last_reason)
    return len(study.trials) - before


class TrialsKeepFailing(RuntimeError):
    def __init__(self, count: int, reason: str) -> None:
        super().__init__(f"{count} trials in a row failed; the last: {reason or 'see the log'}")
