"""Confirmation: the best configuration of each strategy, re-trained with several seeds on the
training split and scored on the held-out test split. Only this module touches the test split.

The search picked each arm's best trial by its validation score, so that score is biased upwards
(the winner of many noisy draws); fresh seeds scored on unseen examples are not. Runs are cached in
the study's user attributes, keyed by configuration, seed and training settings, so rebuilding the
report does not train again. The frozen-feature linear probe of the decision matrix lives here too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import fields

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState

from sweeper.forgetting import ForgettingMeter
from sweeper.param_groups import make_optimizer
from sweeper.records import strategy_of
from sweeper.search_space import TrialConfig
from sweeper.similarity import linear_probe_score, pooled_features
from sweeper.spec import Spec
from sweeper.train import TrainSettings, autocast, evaluate, train_staged
from sweeper.trial import StudyRuntime, plan_for

STRATEGIES = ("feature_extraction", "fine_tuning")
CACHE_PREFIX = "sweeper.confirm."
PROBE_ATTR = "sweeper.probe"
CACHE_VERSION = 1
# confirmation seeds sit apart from the trials' seeds (spec seed * 100_003 + trial number)
SEED_OFFSET = 50_000

RuntimeFactory = Callable[[], StudyRuntime]
Say = Callable[[str], None]


def best_trials(study: optuna.Study) -> dict[str, FrozenTrial | None]:
    """The best COMPLETE trial of each strategy, by the study's validation value."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best = {}
    for strategy in STRATEGIES:
        trials = [t for t in completed if strategy_of(t) == strategy]
        best[strategy] = pick(trials, key=lambda t: t.value) if trials else None
    return best


def config_of(trial: FrozenTrial) -> TrialConfig:
    """The trial's configuration, rebuilt from its Optuna params (the [search] keys)."""
    names = {f.name for f in fields(TrialConfig)}
    return TrialConfig(**{k: v for k, v in trial.params.items() if k in names})


def confirm(
    study: optuna.Study,
    spec: Spec,
    runtime: RuntimeFactory | None,
    say: Say = lambda _: None,
    train: bool = True,
) -> dict[str, list[dict]]:
    """Each arm's confirmation runs, one per seed (``[budget] confirm_seeds``): from the study's
    cache, or trained now. With ``train`` false, an arm appears only when all its runs are cached.

    ``runtime()`` gives a fresh runtime with an empty frozen-prefix cache; it is called once per
    arm that has runs to train, so each arm pays for its own prefix states, as a user training that
    configuration from scratch would.
    """
    runs: dict[str, list[dict]] = {}
    seeds = spec.budget.confirm_seeds
    for strategy, trial in best_trials(study).items():
        if trial is None:
            continue
        config, fresh = config_of(trial), None
        runs[strategy] = []
        for seed in range(seeds):
            key = CACHE_PREFIX + _cache_key(spec, config, seed)
            cached = study.user_attrs.get(key)
            if cached is None and not train:
                del runs[strategy]
                break
            if cached is None:
                fresh = fresh or runtime()
                say(f"confirming {strategy.replace('_', ' ')} (trial {trial.number}) seed {seed + 1}/{seeds}")
                cached = run_once(fresh, config, seed)
                study.set_user_attr(key, cached)
                say(f"  test {_scores(cached)}; {cached['device_seconds']:.1f} device-seconds")
            runs[strategy].append(cached)
    return runs


def _cache_key(spec, config: TrialConfig, seed: int) -> str:
    parts = {
        "version": CACHE_VERSION,
        "params": config.params(),
        "seed": seed,
        "train": spec.train.model_dump(mode="json", exclude={"device"}),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run_once(runtime: StudyRuntime, config: TrialConfig, seed: int) -> dict:
    """Train the configuration on the training split with this seed; score it on the test split.

    ``prefix_seconds`` is the time to get the frozen-prefix states this plan trains from (computed
    by the first seed of an arm, then cached); ``train_seconds`` the staged training itself.
    """
    spec = runtime.spec
    started = time.perf_counter()
    plan = plan_for(config, runtime.pretrained.num_blocks)
    # seed i of both arms: the same head initialisation and batch order (paired runs)
    torch.manual_seed(spec.study.seed * 100_003 + SEED_OFFSET + seed)
    model = runtime.pretrained.build(runtime.num_classes, trainable_from=plan.cut).to(runtime.device)
    settings = TrainSettings(spec.train.batch_size, runtime.device, seed=SEED_OFFSET + seed)
    optimizer = make_optimizer(model, plan, config.head_lr, config.lr_ratio, spec.train.weight_decay)

    def sources_at(start: int):
        return runtime.source(model, "train", start), runtime.source(model, "val", start)

    prefix_started = time.perf_counter()
    for stage in plan.stages:
        sources_at(plan.entry(stage))
    prefix_seconds = time.perf_counter() - prefix_started
    # before training (the model is still pretrained), outside the timed work
    meter = ForgettingMeter(runtime, model, plan) if plan.unfrozen_blocks else None
    train_started = time.perf_counter()
    last = frozenset({plan.total_epochs - 1}) if meter is not None else frozenset()
    results = train_staged(
        model, plan, optimizer, config.head_lr, sources_at, settings, lambda _result: None, last
    )
    train_seconds = time.perf_counter() - train_started
    # the only place anything is scored on the test split
    test = runtime.source(model, "test", plan.cut)
    scores = evaluate(model, test, settings)
    predictions, losses = _per_example(model, test, settings)
    if meter is not None:
        meter.measure(plan.stages[-1].index, results[-1].val_features)
    return {
        "strategy": config.strategy,
        "params": config.params(),
        "seed": seed,
        "test": scores,
        "val": results[-1].val,
        "prefix_seconds": prefix_seconds,
        "train_seconds": train_seconds,
        "device_seconds": prefix_seconds + train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "device": runtime.device.type,
        "predictions": pack(predictions.numpy().astype(np.uint16)),
        "losses": pack(losses.numpy().astype(np.float16)),
        "forgetting": meter.history[-1] if meter is not None else None,
    }


@torch.no_grad()
def _per_example(model, source, settings: TrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    predictions, losses = [], []
    for state, labels in source.batches(settings.batch_size * 4, settings.device):
        with autocast(settings.device):
            logits = model.forward_from(state, source.start).float()
        predictions.append(logits.argmax(1).cpu())
        losses.append(F.cross_entropy(logits, labels, reduction="none").cpu())
    return torch.cat(predictions), torch.cat(losses)


def pack(array: np.ndarray) -> dict:
    return {"dtype": str(array.dtype), "b64": base64.b64encode(array.tobytes()).decode("ascii")}


def unpack(packed: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(packed["b64"]), dtype=np.dtype(packed["dtype"]))


def _scores(run: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in run["test"].items())


def frozen_probe(study: optuna.Study, runtime: RuntimeFactory) -> dict:
    """A linear probe on the pretrained model's pooled features: trained on the training split,
    scored (balanced accuracy) on the validation split. Cached in the study."""
    cached = study.user_attrs.get(PROBE_ATTR)
    if cached is not None and cached.get("version") == CACHE_VERSION:
        return cached
    rt = runtime()
    with torch.random.fork_rng(devices=[]):
        model = rt.pretrained.build(rt.num_classes, trainable_from=rt.pretrained.num_blocks)
        model.to(rt.device)
    batch, top = rt.spec.train.batch_size * 4, model.num_blocks
    started = time.perf_counter()
    train, val = rt.source(model, "train", top), rt.source(model, "val", top)
    score = linear_probe_score(
        pooled_features(model, train, batch, rt.device),
        train.labels,
        pooled_features(model, val, batch, rt.device),
        val.labels,
    )
    probe = {
        "version": CACHE_VERSION,
        "balanced_accuracy": score,
        "num_classes": rt.num_classes,
        "seconds": time.perf_counter() - started,
    }
    study.set_user_attr(PROBE_ATTR, probe)
    return probe
