"""Issue 14's overhead target, measured side by side in one run: what sweeper adds per trial on
top of Optuna's floor, and a 50-trial cached feature-extraction sweep against the bare loop.

50 trials of the default study's feature-extraction arm, over one warm frozen-prefix cache, three
ways, ``--rounds`` times, in a different order each round (each way's best round is kept; every
round is in the JSON):

- **sweeper**: the trial loop `sweeper study` runs (`run_trials` with the study lock, the arm
  queue and `make_objective` with its progress printed to /dev/null), its parameters drawn by the
  study's own sampler (TPE per arm, seeded) and pruner, the MLflow runs written by the writer
  process into a fresh SQLite store, on a fresh study in a study DB that `make_storage` opens as
  `sweeper study` does (SQLite: WAL, synchronous=NORMAL, heartbeats); timed until the MLflow
  writes are done.
- **bare**: the 50 configurations that sweeper's first round drew, through sweeper's own training
  arithmetic with nothing around it (bench_trials.bare_trial: no Optuna, no MLflow, no
  learning-rate schedule, no best-epoch copies).
- **floor**: Optuna alone, as bench/optuna_floor.py measures it, on the same kind of study (the
  same sampler, pruner and storage): per trial ``study.optimize(n_trials=1)`` and the calls a
  feature-extraction trial needs: its 3 suggestions, one ``report`` per epoch (it is never judged
  by the pruner, so no ``should_prune``) and 3 user attributes (worker, MLflow run id, seconds).
  No model.

Targets (issue 14), judged on the best round of each:
- sweeper's additions per trial = (sweeper - bare - floor) / 50 <= 10 ms;
- sweeper / bare <= 2.

    HF_HUB_OFFLINE=1 python bench/overhead_target.py --json bench/overhead_target.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future
from pathlib import Path

import optuna
import torch
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_trials import bare_trial  # noqa: E402

from sweeper.budget import ArmBudget  # noqa: E402
from sweeper.cache import PrefixCache  # noqa: E402
from sweeper.config import TrialConfig  # noqa: E402
from sweeper.mlflow_writer import ProcessWriter  # noqa: E402
from sweeper.progress import Progress  # noqa: E402
from sweeper.records import FEATURE_EXTRACTION  # noqa: E402
from sweeper.runtime import StudyRuntime, prepare  # noqa: E402
from sweeper.search_space import suggest_config  # noqa: E402
from sweeper.spec import bounds, load_spec  # noqa: E402
from sweeper.storage import StudyLock, make_storage  # noqa: E402
from sweeper.study import ArmQueue, ArmSampler, make_pruner, run_trials  # noqa: E402
from sweeper.tracking import StudyTracker  # noqa: E402
from sweeper.trial import make_objective  # noqa: E402

TRIALS = 50
TARGET_MS, TARGET_RATIO = 10.0, 2.0


def new_study(spec, storage, name: str) -> optuna.Study:
    """A study as `open_study` makes it: the spec's sampler and pruner."""
    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=ArmSampler(seed=spec.study.seed, n_startup_trials=max(3, min(10, spec.budget.trials // 4)),
                           constant_liar=True),
        pruner=make_pruner(spec),
        direction=spec.study.direction,
    )  # fmt: skip


def bare(runtime: StudyRuntime, configs) -> float:
    started = time.perf_counter()
    for config in configs:
        bare_trial(runtime, config)
    return time.perf_counter() - started


def floor(spec, storage, trials: int, name: str) -> float:
    """Optuna alone: bench/optuna_floor.py's calls, with each configuration's epochs reported."""

    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, spec.search, FEATURE_EXTRACTION)
        for epoch in range(config.head_epochs):
            trial.report(0.5, epoch)
        trial.set_user_attr("worker", "host:1")
        trial.set_user_attr("mlflow_run_id", "0" * 32)
        trial.set_user_attr("seconds", {"wall": 0.1, "device": 0.1, "bookkeeping": 0.01})
        return 0.5

    study = new_study(spec, storage, name)
    started = time.perf_counter()
    for _ in range(trials):
        study.optimize(objective, n_trials=1, gc_after_trial=False)
    return time.perf_counter() - started


class NoMlflowWriter:
    """A writer that makes no MLflow write and answers at once (a new run id for each run): the
    sweep without MLflow's share, to tell that share from the rest of sweeper's."""

    def start(self) -> None: ...
    def open(self) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...

    def send(self, op: str, key: str, args: tuple = ()) -> Future:
        answered: Future = Future()
        answered.set_result(uuid.uuid4().hex if op == "create" else None)
        return answered


def sweep(
    spec, runtime: StudyRuntime, storage, tracking_uri: str, trials: int, name: str, mlflow: bool = True
):
    """`sweeper study`'s trial loop over ``trials`` feature-extraction trials, MLflow writes
    included unless ``mlflow`` is False: its seconds and the configurations it drew."""
    writer = ProcessWriter(tracking_uri) if mlflow else NoMlflowWriter()
    writer.start()
    tracker = StudyTracker(tracking_uri, name, writer=writer)
    writer.open()
    study = new_study(spec, storage, name)
    lock = StudyLock(storage, name)
    progress = Progress(trials, 0, spec.study.metric, Console(file=open(os.devnull, "w")))  # noqa: SIM115
    objective = make_objective(runtime, tracker, progress)
    started = time.perf_counter()
    run_trials(study, objective, trials, lock, arms=ArmQueue(spec, ArmBudget(trials, 1)))
    tracker.close()  # its writes are done
    seconds = time.perf_counter() - started
    done = study.get_trials(deepcopy=False)
    assert [t.state.name for t in done] == ["COMPLETE"] * trials, "a benchmark trial did not complete"
    return seconds, [TrialConfig(0, t.params["head_lr"], t.params["head_epochs"]) for t in done]


def run(args) -> dict:
    spec = load_spec(args.spec)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"device": "cpu"})})
    work = Path(tempfile.mkdtemp(prefix="sweeper-overhead-"))
    runtime = StudyRuntime(prepare(spec, "cpu"), PrefixCache(args.cache or work / "cache"))
    head_lr = bounds(spec.search.head_lr)[0]
    bare_trial(runtime, TrialConfig(0, head_lr, 1))  # the cache built and in memory before timing
    storage = make_storage(f"sqlite:///{work / 'study.db'}")
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    rounds, drawn = [], []
    for n in range(args.rounds):
        timed = {}

        def swept(name=f"sweep-{n}"):
            seconds, configs = sweep(spec, runtime, storage, tracking_uri, args.trials, name)
            drawn.append(configs)
            return seconds

        ways = [
            ("sweeper", swept),  # first in round 0: the bare loop replays what it drew
            ("bare", lambda: bare(runtime, drawn[0])),
            ("floor", lambda name=f"floor-{n}": floor(spec, storage, args.trials, name)),
            (
                "sweeper_no_mlflow",
                lambda name=f"quiet-{n}": sweep(
                    spec, runtime, storage, tracking_uri, args.trials, name, mlflow=False
                )[0],
            ),
        ]
        for way, measure in ways[n % 4 :] + ways[: n % 4]:  # a different way first each round
            timed[way] = measure()
        rounds.append(timed)
        print(json.dumps({k: round(v, 3) for k, v in timed.items()}), flush=True)
    best = {way: min(r[way] for r in rounds) for way in ("bare", "floor", "sweeper", "sweeper_no_mlflow")}
    added_ms = 1000 * (best["sweeper"] - best["bare"] - best["floor"]) / args.trials
    ratio = best["sweeper"] / best["bare"]
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "optuna": optuna.__version__, "torch_threads": torch.get_num_threads(),
                    "load_average_at_end": os.getloadavg()},
        "command": " ".join(["python", *sys.argv]), "trials": args.trials,
        "epochs": sum(c.head_epochs for c in drawn[0]),
        "same_configurations_every_round": all(d == drawn[0] for d in drawn),
        "rounds": rounds, "best_seconds": best,
        "ms_per_trial": {way: 1000 * s / args.trials for way, s in best.items()},
        "sweeper_added_ms_per_trial": added_ms, "sweeper_over_bare": ratio,
        # MLflow's share (a run per trial, written by the writer process) and the rest of sweeper's
        "mlflow_ms_per_trial": 1000 * (best["sweeper"] - best["sweeper_no_mlflow"]) / args.trials,
        "added_without_mlflow_ms_per_trial":
            1000 * (best["sweeper_no_mlflow"] - best["bare"] - best["floor"]) / args.trials,
        "targets": {f"added <= {TARGET_MS:g} ms per trial": added_ms <= TARGET_MS,
                    f"sweeper / bare <= {TARGET_RATIO:g}": ratio <= TARGET_RATIO},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "studies" / "vader-minilm.toml")
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--cache", type=Path, help="frozen-prefix cache folder (default: a fresh one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(json.dumps({k: result[k] for k in ("ms_per_trial", "sweeper_added_ms_per_trial", "mlflow_ms_per_trial",
                      "added_without_mlflow_ms_per_trial", "sweeper_over_bare", "targets")}, indent=2))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
