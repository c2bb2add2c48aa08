"""The least a trial costs in Optuna storage calls, on the study storage `sweeper study` opens.

No model, no MLflow: ``study.optimize`` over an objective that makes only the calls a trial of the
default study makes (its suggestions, one report and pruning check per epoch, its attributes).
It bounds from below what sweeper can add to a trial.

    python bench/optuna_floor.py                 # SQLite in a temporary folder
    python bench/optuna_floor.py --storage postgresql+psycopg://postgres@127.0.0.1/floor
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeper.storage import make_storage  # noqa: E402

EPOCHS = 4  # the default study's longest feature-extraction trial


def _ask_and_tell(trial: optuna.Trial) -> float:
    return 0.5


def _suggest_and_report(trial: optuna.Trial) -> float:
    trial.suggest_int("unfrozen_blocks", 0, 0)
    trial.suggest_float("head_lr", 1e-3, 1e-1, log=True)
    trial.suggest_int("head_epochs", 1, EPOCHS)
    for epoch in range(EPOCHS):
        trial.report(0.5, epoch)
        trial.should_prune()
    return 0.5


def _as_sweeper(trial: optuna.Trial) -> float:
    value = _suggest_and_report(trial)
    trial.set_user_attr("worker", "host:1")
    trial.set_user_attr("mlflow_run_id", "0" * 32)
    trial.set_user_attr("seconds", {"wall": 0.1, "device": 0.1, "bookkeeping": 0.01})
    return value


def median_ms(storage, objective, trials: int) -> float:
    study = optuna.create_study(
        study_name=f"floor-{objective.__name__}-{time.monotonic_ns()}",
        storage=storage,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    seconds = []
    for _ in range(trials):
        started = time.perf_counter()
        study.optimize(objective, n_trials=1, gc_after_trial=False)
        seconds.append(time.perf_counter() - started)
    return 1000 * statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="study storage URL (default: a fresh SQLite file)")
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = args.storage or f"sqlite:///{Path(tempfile.mkdtemp(prefix='sweeper-floor-')) / 'study.db'}"
    storage = make_storage(url)
    print("| per trial | ms (median) |\n|---|---|")
    for label, objective in [
        ("ask + tell only", _ask_and_tell),
        (f"+ 3 suggestions, {EPOCHS} reports with should_prune", _suggest_and_report),
        ("+ 3 user attributes (as sweeper writes them)", _as_sweeper),
    ]:
        print(f"| {label} | {median_ms(storage, objective, args.trials):.1f} |")


if __name__ == "__main__":
    main()
