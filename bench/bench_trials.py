"""Benchmark: the same trials through sweeper and through a plain PyTorch loop, side by side.

The plain loop is what a user would write without sweeper, following the same recipe (head first,
then the top blocks unfrozen at head_lr * lr_ratio, same epochs, batch size and optimizer): a full
forward pass of the backbone every epoch, no cache. sweeper runs each trial as a real Optuna trial
(SQLite study database as `sweeper study` opens it) with its MLflow run, starting from a cold
frozen-prefix cache.

Then, over the warm cache, the same trials run through sweeper again and through a bare loop: the
same training arithmetic with nothing around it (no Optuna, MLflow or progress). Their ratio is what
sweeper's machinery costs:
- ``overhead_vs_bare`` = 1 - bare / sweeper: the share of sweeper's warm time that the bare loop
  does not spend, whatever the cause (the calls, the trial loop, and what they slow in the training);
- ``overhead_fraction``: the share of sweeper's warm time inside the Optuna and MLflow calls and
  the trial loop, as timed by the trials themselves (it misses what those slow elsewhere, but it is
  precise where the two loops differ by less than the noise).

    python bench/bench_trials.py                       # CPU, the default study's model and data
    python bench/bench_trials.py --device cuda         # GPU (bf16)

Prints a table (wall seconds, training samples/s, plain/sweeper ratio, sweeper/bare ratio, overhead)
and writes it as JSON (--json).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweeper.cache import PrefixCache  # noqa: E402
from sweeper.config import TrialConfig  # noqa: E402
from sweeper.device import autocast  # noqa: E402
from sweeper.param_groups import build_param_groups, make_optimizer  # noqa: E402
from sweeper.records import seconds_of  # noqa: E402
from sweeper.runtime import StudyRuntime, prepare  # noqa: E402
from sweeper.spec import bounds, load_spec  # noqa: E402
from sweeper.stages import apply_stage  # noqa: E402
from sweeper.storage import StudyLock, make_storage  # noqa: E402
from sweeper.study import run_trials  # noqa: E402
from sweeper.tracking import StudyTracker  # noqa: E402
from sweeper.train import TrainSettings, evaluate  # noqa: E402
from sweeper.trial import run_trial  # noqa: E402


def scenarios(num_blocks: int, fe_trials: int, epochs: int, fe_epochs: int) -> dict[str, list[TrialConfig]]:
    head_lrs = [1e-3 * (30 ** (i / max(1, fe_trials - 1))) for i in range(fe_trials)]
    half = num_blocks // 2
    return {
        f"{fe_trials} feature-extraction trials": [TrialConfig(0, lr, fe_epochs) for lr in head_lrs],
        f"1 of {num_blocks} blocks unfrozen": [TrialConfig(1, 5e-3, 2, 0.1, epochs, 1)],
        f"{half} of {num_blocks} blocks unfrozen": [TrialConfig(half, 5e-3, 2, 0.1, epochs, half)],
    }


# ---------------------------------------------------------------- the plain loop a user would write
def plain_trial(pretrained, data, splits, config: TrialConfig, device, batch_size: int, seed: int) -> float:
    """Frozen backbone + new head, then the top layers unfrozen; full forward every epoch."""
    torch.manual_seed(seed)
    backbone = copy.deepcopy(pretrained.module).to(device)
    layers = _layers(backbone)
    head = nn.Linear(backbone.config.hidden_size, len(data.raw.classes)).to(device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    top = [p for layer in layers[len(layers) - config.unfrozen_blocks :] for p in layer.parameters()]
    groups = [{"params": list(head.parameters()), "lr": config.head_lr}]
    if top:
        groups.append({"params": top, "lr": config.head_lr * config.lr_ratio})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    train_idx, val_idx = torch.as_tensor(splits.train), torch.as_tensor(splits.val)
    generator = torch.Generator().manual_seed(seed)
    for stage_epochs, unfreeze in [(config.head_epochs, False), (config.stage_epochs or 0, True)]:
        if unfreeze and top:
            for p in top:
                p.requires_grad_(True)
        if unfreeze and not top:
            continue
        for _ in range(stage_epochs):
            backbone.train(unfreeze)
            for batch in train_idx[torch.randperm(len(train_idx), generator=generator)].split(batch_size):
                logits = _plain_forward(backbone, head, data, batch, device)
                loss = F.cross_entropy(logits.float(), data.labels[batch].to(device))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            backbone.eval()
            with torch.no_grad():
                correct = sum(
                    int(
                        (
                            _plain_forward(backbone, head, data, b, device).argmax(1).cpu() == data.labels[b]
                        ).sum()
                    )
                    for b in val_idx.split(batch_size * 4)
                )
    return correct / len(val_idx)


def _layers(backbone):
    return backbone.encoder.layer if hasattr(backbone, "encoder") else backbone.transformer.layer


def _plain_forward(backbone, head, data, batch, device):
    tokens = {k: v[batch] for k, v in data._tokens.items()}
    length = int(tokens["attention_mask"].sum(1).max())  # dynamic padding, as a collator does
    tokens = {k: v[:, :length].to(device) for k, v in tokens.items()}
    with autocast(device):
        hidden = backbone(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return head((hidden * mask).sum(1) / mask.sum(1))


# ---------------------------------------------------------------- the bare loop (bf16 on a GPU)
def bare_trial(runtime: StudyRuntime, config: TrialConfig) -> None:
    """sweeper's own training arithmetic with nothing around it: no Optuna, no MLflow, no progress."""
    plan = config.plan(runtime.pretrained.num_blocks)
    model = runtime.pretrained.build(runtime.num_classes, trainable_from=plan.cut).to(runtime.device)
    optimizer = make_optimizer(build_param_groups(model, plan, config.lr_ratio), config.head_lr, 0.01)
    settings = TrainSettings(runtime.spec.train.batch_size, runtime.device)
    for stage in plan.stages:
        start = plan.entry(stage)
        train = runtime.source(model, "train", start)
        val = runtime.source(model, "val", start)
        apply_stage(model, plan, stage)
        for _ in range(stage.epochs):
            for state, labels in train.batches(settings.batch_size, runtime.device, torch.Generator()):
                with autocast(runtime.device):
                    loss = F.cross_entropy(model.forward_from(state, start, start).float(), labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            evaluate(model, val, settings)
            apply_stage(model, plan, stage)


# ---------------------------------------------------------------- measurement
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _sweep(study, storage, runtime: StudyRuntime, tracker: StudyTracker, configs) -> float:
    """Run the configurations as the trials of ``study`` through sweeper's own trial loop (study
    lock, trial claim, heartbeats, a garbage collection after a pruned or failed trial), as
    `sweeper study` does.

    Returns the seconds the trials spent training (each trial's wall time less its bookkeeping):
    the rest of the sweep's time is what sweeper adds around the training.
    """
    run_trials(
        study,
        lambda trial: run_trial(runtime, tracker, trial, configs[trial.number]),
        len(configs),
        StudyLock(storage, study.study_name),
    )
    tracker.flush()  # as `sweeper study` does before it returns
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * len(configs), "a benchmark trial failed"
    return sum(seconds_of(t, "wall") - seconds_of(t, "bookkeeping") for t in trials)


def _plain_trials(pretrained, data, splits, configs, device, spec) -> None:
    for seed, config in enumerate(configs):
        plain_trial(pretrained, data, splits, config, device, spec.train.batch_size, seed)


def _bare_trials(runtime: StudyRuntime, configs) -> None:
    for config in configs:
        bare_trial(runtime, config)


def _timed(device, work, *args) -> tuple[float, object]:
    _sync(device)
    started = time.perf_counter()
    result = work(*args)
    _sync(device)
    return time.perf_counter() - started, result


def run(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    spec = load_spec(args.spec)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"device": args.device})})
    prepared = prepare(spec, args.device)
    pretrained, data, splits = prepared.pretrained, prepared.data, prepared.splits
    work = Path(tempfile.mkdtemp(prefix="sweeper-bench-"))
    storage = make_storage(f"sqlite:///{work / 'study.db'}")
    tracker = StudyTracker(args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}", "bench")
    train_examples = len(splits.train)
    if device.type == "cuda":
        # CUDA loads kernels lazily: warm forward and backward up before anything is timed
        plain_trial(
            pretrained, data, splits, TrialConfig(1, 5e-3, 1, 0.1, 1, 1), device, spec.train.batch_size, 0
        )
    rows = []
    for name, configs in scenarios(
        pretrained.num_blocks, args.fe_trials, args.epochs, bounds(spec.search.head_epochs)[1]
    ).items():
        if args.only and args.only not in name:
            continue
        cache = PrefixCache(work / f"cache-{len(rows)}")  # cold: building the cache is timed
        runtime = StudyRuntime(prepared, cache)

        def new_study(kind: str) -> optuna.Study:
            return optuna.create_study(
                study_name=f"bench-{kind}-{len(rows)}-{time.monotonic_ns()}",
                storage=storage,
                direction="maximize",
                pruner=optuna.pruners.NopPruner(),
            )

        epochs = sum(c.plan(pretrained.num_blocks).total_epochs for c in configs)
        samples = train_examples * epochs
        study = new_study("cold")
        sweeper_s, _ = _timed(device, _sweep, study, storage, runtime, tracker, configs)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        plain_s, _ = _timed(device, _plain_trials, pretrained, data, splits, configs, device, spec)
        # over the warm cache: sweeper and the bare loop, alternating; the best of each
        warm_runs, bare_runs = [], []
        for _ in range(args.repeats):
            bare_runs.append(_timed(device, _bare_trials, runtime, configs)[0])
            warm_runs.append(_timed(device, _sweep, new_study("warm"), storage, runtime, tracker, configs))
        warm_s, training_s = min(warm_runs)
        overhead = warm_s - training_s
        bare_s = min(bare_runs)
        row = {
            "scenario": name,
            "trials": len(configs),
            "epochs": epochs,
            "sweeper_s": round(sweeper_s, 2),
            "plain_s": round(plain_s, 2),
            "sweeper_samples_per_s": round(samples / sweeper_s, 1),
            "plain_samples_per_s": round(samples / plain_s, 1),
            "speedup": round(plain_s / sweeper_s, 2),
            "bare_s": round(bare_s, 2),
            "sweeper_warm_s": round(warm_s, 2),
            "sweeper_vs_bare": round(bare_s / warm_s, 3),
            "overhead_vs_bare": round(1 - bare_s / warm_s, 4),
            "overhead_fraction": round(overhead / warm_s, 4),
            "overhead_ms_per_trial": round(1000 * overhead / len(configs), 1),
        }
        if device.type == "cuda":
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"machine": _machine(device), "command": " ".join(sys.argv), "spec": str(args.spec), "rows": rows}


def _machine(device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table(result: dict) -> str:
    keys = [
        "scenario",
        "trials",
        "epochs",
        "sweeper_s",
        "plain_s",
        "speedup",
        "sweeper_samples_per_s",
        "plain_samples_per_s",
        "bare_s",
        "sweeper_warm_s",
        "sweeper_vs_bare",
        "overhead_vs_bare",
        "overhead_fraction",
        "overhead_ms_per_trial",
    ]
    keys += [k for k in ("peak_memory_gib",) if k in result["rows"][0]]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in result["rows"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "studies" / "vader-minilm.toml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fe-trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each unfreezing stage")
    parser.add_argument("--repeats", type=int, default=2, help="warm sweeper and bare runs (best kept)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--tracking-uri", help="MLflow store (default: a fresh sqlite file)")
    parser.add_argument("--only", help="run only the scenarios whose name contains this text")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = run(args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
