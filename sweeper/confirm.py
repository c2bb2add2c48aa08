"""Confirmation: the best configuration of each strategy, re-trained with several seeds on the
training split and scored on the held-out test split. Only this module touches the test split.

The search picked each arm's best trial by its validation score, so that score is biased upwards
(the winner of many noisy draws); fresh seeds scored on unseen examples are not. A confirmation
run is a `fit` run, as a trial is, with a confirmation seed. Runs are cached in the study's user
attributes, keyed by configuration, seed and training settings, so rebuilding the report does not
train again. The frozen-feature linear probe of the decision matrix lives here too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState

from sweeper.config import TrialConfig
from sweeper.device import autocast
from sweeper.fit import Timing, confirmation_seed, fit
from sweeper.records import STRATEGIES, Strategy, StudyAttr, strategy_of
from sweeper.runtime import Say, StudyRuntime
from sweeper.similarity import linear_probe_score
from sweeper.spec import Spec
from sweeper.states import StateSource
from sweeper.train import TrainSettings, evaluate

# version 2: runs train through `fit` (the batch order follows the spec's seed, [train] compile
# applies), so runs cached by version 1 are not mixed with new ones
CACHE_VERSION = 2
PROBE_VERSION = 1

RuntimeFactory = Callable[[], StudyRuntime]  # a fresh runtime (empty frozen-prefix cache) per call


def best_trials(study: optuna.Study) -> dict[Strategy, FrozenTrial | None]:
    """The best COMPLETE trial of each strategy, by the study's validation value."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best = {}
    for strategy in STRATEGIES:
        trials = [t for t in completed if strategy_of(t) == strategy]
        best[strategy] = pick(trials, key=lambda t: t.value) if trials else None
    return best


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
        config, fresh = TrialConfig.from_params(trial.params), None
        runs[strategy] = []
        for seed in range(seeds):
            key = StudyAttr.CONFIRMATION_PREFIX + _cache_key(spec, config, seed)
            cached = study.user_attrs.get(key)
            if cached is None and not train:
                del runs[strategy]
                break
            if cached is None:
                fresh = fresh or runtime()
                say(f"confirming {strategy.replace('_', ' ')} (trial {trial.number}) seed {seed + 1}/{seeds}")
                cached = run_once(fresh, config, confirmation_seed(seed))
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
    """Train the configuration with this seed (a `fit` run); score it on the test split.

    ``prefix_seconds`` is the time to get the frozen-prefix states this plan trains from (computed
    by the first seed of an arm, then cached); ``train_seconds`` the staged training itself.
    """
    started = time.perf_counter()
    timing = Timing()
    fitted = fit(runtime, config, seed, timing=timing)
    # the only place anything is scored on the test split
    settings = TrainSettings(runtime.spec.train.batch_size, runtime.device)
    test = runtime.source(fitted.model, "test", fitted.plan.cut)
    predictions, losses = _per_example(fitted.model, test, settings)
    return {
        "strategy": config.strategy,
        "params": config.params(),
        "seed": seed,
        "test": evaluate(fitted.model, test, settings),
        "val": fitted.epochs[-1].val,
        "prefix_seconds": timing.prefix,
        "train_seconds": timing.train,
        "device_seconds": timing.device,
        "wall_seconds": time.perf_counter() - started,
        "device": runtime.device.type,
        "predictions": pack(predictions.numpy().astype(np.uint16)),
        "losses": pack(losses.numpy().astype(np.float16)),
        "forgetting": fitted.forgetting[-1] if fitted.forgetting else None,
    }


@torch.no_grad()
def _per_example(model, source: StateSource, settings: TrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
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
    cached = study.user_attrs.get(StudyAttr.PROBE)
    if cached is not None and cached.get("version") == PROBE_VERSION:
        return cached
    rt = runtime()
    started = time.perf_counter()
    score = linear_probe_score(
        rt.pretrained_features("train"),
        rt.data.labels[torch.as_tensor(rt.splits.train)],
        rt.pretrained_features("val"),
        rt.data.labels[torch.as_tensor(rt.splits.val)],
    )
    probe = {
        "version": PROBE_VERSION,
        "balanced_accuracy": score,
        "num_classes": rt.num_classes,
        "seconds": time.perf_counter() - started,
    }
    study.set_user_attr(StudyAttr.PROBE, probe)
    return probe
