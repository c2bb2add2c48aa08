"""The default study's question answered two ways in one run: sweeper (`study`, then a confirmed
`report`) and the way an ML engineer would with `transformers.Trainer.hyperparameter_search`
(Optuna backend), timed side by side.

The peer: `AutoModelForSequenceClassification` on the same offline MiniLM, a `model_init` that
freezes the embeddings and all but the top k encoder layers (k searched, 0..6; 0 = feature
extraction: only the pooler and the classifier train), one learning rate for everything trained,
a linear decay after a 10% warmup, evaluation every epoch, Optuna's defaults (TPE, seeded; the
median pruner) and the same trial budget as sweeper's fine-tuning arm. The examples, labels and
split are sweeper's own (`labelled_split` of studies/vader-minilm.toml), tokenized at the spec's
max_length. Its answer is unconfirmed: the best trial of the search, one seed. Each trial's model
is also scored on the test split when it ends (outside the search's objective; that scoring's
seconds are left out of the peer's time), so the test accuracy of the model it would pick is known
without training it again.

Each arm runs in its own process, one after the other, in a fresh temporary folder (study DB,
MLflow store, frozen-prefix cache all cold); wall time, and CPU time of the arm's processes and
their children (`RUSAGE_CHILDREN`), are measured around them. The load average is sampled every
30 s: the machine may be shared.

    HF_HUB_OFFLINE=1 python bench/peer_hf_trainer.py --out bench/peer_hf_trainer.json
    HF_HUB_OFFLINE=1 python bench/peer_hf_trainer.py --arms hf --smoke   # a minute: does it run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = "studies/vader-minilm.toml"
LAYERS = 6


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path, env: dict) -> dict:
    """Run ``command``; its wall seconds and the CPU seconds of it and its children."""
    cpu, started = _cpu_children(), time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, _cpu_children() - cpu
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {"wall_seconds": wall, "cpu_seconds": cpu}


# ---- the peer: Trainer.hyperparameter_search, in its own process (--run-hf) ----


def _hf_data(max_examples: int | None):
    from sweeper.runtime import labelled_split
    from sweeper.spec import load_spec

    spec = load_spec(REPO / SPEC)
    raw, splits = labelled_split(spec)

    def rows(indices):
        indices = indices[:max_examples] if max_examples else indices
        return [raw.examples[i] for i in indices], [raw.labels[i] for i in indices]

    return spec, raw, {name: rows(getattr(splits, name)) for name in ("train", "val", "test")}


def _encoded(tokenizer, texts, labels, max_length):
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": label}
        for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], labels, strict=True)
    ]


def _test_accuracy(model, collator, examples) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(examples), 256):
            batch = collator(examples[start : start + 256])
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(examples)


def run_hf(out: Path, trials: int, max_epochs: int, max_examples: int | None) -> None:
    import numpy as np
    import optuna
    import transformers
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from sweeper.backbones.loading import _transformers_location

    spec, raw, data = _hf_data(max_examples)
    location = _transformers_location(spec.model.name, spec.resolve)
    tokenizer = AutoTokenizer.from_pretrained(location)
    sets = {name: _encoded(tokenizer, *rows, spec.model.max_length) for name, rows in data.items()}
    collator = DataCollatorWithPadding(tokenizer)
    found: dict[int, dict] = {}

    def model_init(trial):
        # suggested here too (the same value hp_space gets): Trainer builds the model first
        k = LAYERS if trial is None else trial.suggest_int("unfrozen_layers", 0, LAYERS)
        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=len(raw.classes))
        for p in model.bert.embeddings.parameters():
            p.requires_grad = False
        for i, layer in enumerate(model.bert.encoder.layer):
            for p in layer.parameters():
                p.requires_grad = i >= LAYERS - k
        return model

    def hp_space(trial):
        return {
            "unfrozen_layers": trial.suggest_int("unfrozen_layers", 0, LAYERS),
            "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
            "num_train_epochs": trial.suggest_int("num_train_epochs", 2, max_epochs),
        }

    class TestScore(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            started = time.perf_counter()
            number = trainer._trial.number
            found[number] = {
                "val_per_epoch": [e["eval_accuracy"] for e in state.log_history if "eval_accuracy" in e],
                "test_accuracy": _test_accuracy(model, collator, sets["test"]),
            }
            found[number]["test_seconds"] = time.perf_counter() - started

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(out.parent / "hf-trainer"), per_device_train_batch_size=spec.train.batch_size,
        per_device_eval_batch_size=256, lr_scheduler_type="linear", warmup_steps=0.1,
        eval_strategy="epoch", save_strategy="no", logging_strategy="epoch", report_to="none",
        seed=spec.study.seed, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(
        args=args, model_init=model_init, train_dataset=sets["train"], eval_dataset=sets["val"],
        data_collator=collator, compute_metrics=accuracy, callbacks=[TestScore()],
    )  # fmt: skip
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    best = trainer.hyperparameter_search(
        hp_space=hp_space, backend="optuna", n_trials=trials, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=spec.study.seed),
    )  # fmt: skip
    wall = time.perf_counter() - started
    chosen = found[int(best.run_id)]
    result = {
        "search_wall_seconds": wall,
        "test_scoring_seconds": sum(t["test_seconds"] for t in found.values()),
        "best": {"trial": int(best.run_id), "val_accuracy": best.objective, "params": best.hyperparameters,
                 "test_accuracy": chosen["test_accuracy"]},
        "decision": "feature_extraction" if best.hyperparameters["unfrozen_layers"] == 0 else "fine_tuning",
        "trials": {str(n): t for n, t in sorted(found.items())},
        "trials_finished": len(found), "trials_run": trials,
        "train_examples": len(sets["train"]), "val_examples": len(sets["val"]), "test_examples": len(sets["test"]),
    }  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")


# ---- the side-by-side run ----


class LoadSampler(threading.Thread):
    def __init__(self, every: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._stop = every, [], threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(
                [round(time.time()), *map(float, Path("/proc/loadavg").read_text().split()[:3])]
            )
            self._stop.wait(self.every)

    def stop(self) -> list:
        self._stop.set()
        return self.samples


def sweeper_arm(source: Path, env: dict) -> dict:
    study = timed([sys.executable, "-m", "sweeper", "study"], source, env)
    report = timed([sys.executable, "-m", "sweeper", "report", SPEC], source, env)
    decided = json.loads((source / "reports" / "vader-minilm" / "report.json").read_text())
    arms = {a: decided[a] for a in ("feature_extraction", "fine_tuning")}
    return {
        "study_command": study, "report_command": report,
        "wall_seconds": study["wall_seconds"] + report["wall_seconds"],
        "cpu_seconds": study["cpu_seconds"] + report["cpu_seconds"],
        "decision": decided["decision"], "confirmed": decided.get("confirmed"), "reason": decided["reason"],
        "gain": decided["gain"], "gain_ci": decided["gain_ci"], "seeds": decided["seeds"],
        "best_val": {a: v["search_value"] for a, v in arms.items()},
        "best_params": {a: v["params"] for a, v in arms.items()},
        "test_accuracy_per_seed": {a: v["seed_values"] for a, v in arms.items()},
        "trials": {a: v["trials"] for a, v in arms.items()},
        "report": decided,
    }  # fmt: skip


def hf_arm(work: Path, env: dict, trials: int, max_epochs: int, max_examples: int | None) -> dict:
    out = work / "hf.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--run-hf", str(out), "--trials", str(trials),
               "--max-epochs", str(max_epochs)]  # fmt: skip
    if max_examples:
        command += ["--max-examples", str(max_examples)]
    times = timed(command, REPO, env)
    result = json.loads(out.read_text())
    return {**times, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "peer_hf_trainer.json")
    parser.add_argument("--arms", default="sweeper,hf", help="which arms, in order (default: sweeper,hf)")
    parser.add_argument(
        "--trials", type=int, default=12, help="the peer's trial budget (sweeper's: the spec's)"
    )
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--max-examples", type=int, help="per split, for a smoke run")
    parser.add_argument("--smoke", action="store_true", help="2 trials of at most 2 epochs on 300 examples")
    parser.add_argument("--run-hf", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.max_epochs, args.max_examples = 2, 2, 300
    if args.run_hf:
        return run_hf(args.run_hf, args.trials, args.max_epochs, args.max_examples)
    sys.path.insert(0, str(REPO / "bench"))
    from time_to_decision import checkout

    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "command": " ".join(["python", "bench/peer_hf_trainer.py", *sys.argv[1:]]),
        "peer_trials": args.trials, "peer_max_epochs": args.max_epochs,
    }  # fmt: skip
    sampler = LoadSampler()
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="sweeper-peer-") as work_dir:
        work = Path(work_dir)
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
               "SWEEPER_CACHE_DIR": str(work / "cache")}  # fmt: skip
        for name in ("SWEEPER_STORAGE", "MLFLOW_TRACKING_URI"):
            env.pop(name, None)
        for arm in args.arms.split(","):
            if arm == "sweeper":
                source = checkout(None, work / "sweeper")
                results[arm] = sweeper_arm(source, {**env, "PYTHONPATH": str(source)})
            else:
                results[arm] = hf_arm(work, env, args.trials, args.max_epochs, args.max_examples)
            print(f"{arm}: {results[arm]['wall_seconds']:.0f} s wall, {results[arm]['cpu_seconds']:.0f} s CPU, "
                  f"{results[arm]['decision']}", flush=True)  # fmt: skip
            results["load_average"] = sampler.samples
            args.out.write_text(json.dumps(results, indent=2) + "\n")  # each arm as soon as it ends
    results["load_average"] = sampler.stop()
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
