"""Confirmation: the best configuration of each strategy, re-trained with several seeds on the
training split and scored on the held-out test split. Only this module touches the test split.

The search picked each arm's best trial by its validation score, so that score is biased upwards
(the winner of many noisy draws); fresh seeds scored on unseen examples are not. A confirmation
run is a `fit` run, as a trial is, with a confirmation seed. Runs are cached in the study's user
attributes, keyed by configuration, seed, training settings and the digests of the data and the
weights, so rebuilding the report does not train again. The frozen-feature linear probe of the decision matrix lives here too.
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
from sweeper.records import FINE_TUNING, STRATEGIES, Strategy, StudyAttr, method_of, strategy_of
from sweeper.runtime import Say, StudyRuntime
from sweeper.similarity import linear_probe_score
from sweeper.spec import Spec
from sweeper.states import StateSource
from sweeper.train import TrainSettings, evaluate

# version 2: runs train through `fit` (the batch order follows the spec's seed, [train] compile
# applies); version 3: a run ends at its best epoch ([train] rollback) and each stage has its
# learning-rate schedule; version 4: keyed by the digests of the data and the weights too (the
# study's identity). Runs cached by earlier versions are not mixed with new ones
CACHE_VERSION = 4
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


def best_by_method(study: optuna.Study) -> dict[str, FrozenTrial]:
    """The best COMPLETE fine-tuning trial of each method that ran, by method name."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    grouped: dict[str, list[FrozenTrial]] = {}
    for trial in completed:
        if strategy_of(trial) == FINE_TUNING:
            grouped.setdefault(method_of(trial), []).append(trial)
    return {method: pick(trials, key=lambda t: t.value) for method, trials in sorted(grouped.items())}


def method_arm(method: str) -> str:
    """The confirmation arm of a fine-tuning method other than the best fine-tuning trial's."""
    return f"{FINE_TUNING}:{method}"


def arm_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """The trials the confirmation re-trains: the best of each strategy, keyed by strategy as
    ever (a study of one method confirms these two), and the best trial of each other
    fine-tuning method that ran, keyed `method_arm(method)`."""
    arms: dict[str, FrozenTrial] = {s: t for s, t in best_trials(study).items() if t is not None}
    if FINE_TUNING in arms:
        tuned = method_of(arms[FINE_TUNING])
        arms |= {method_arm(m): t for m, t in best_by_method(study).items() if m != tuned}
    return arms


def confirm(
    study: optuna.Study,
    spec: Spec,
    runtime: RuntimeFactory | None,
    say: Say = lambda _: None,
    train: bool = True,
    more: Callable[[dict[str, list[dict]]], bool] = lambda _: False,
) -> dict[str, list[dict]]:
    """Each arm's confirmation runs (`arm_trials`), one per paired seed: from the study's cache,
    or trained now.

    ``[budget] confirm_seeds`` seeds first; then, while ``more(runs)`` says the evidence is not
    yet enough and fewer than ``[budget] max_confirm_seeds`` have run, one more seed of each arm
    (seed i of both arms shares its head initialisation and batch order). With ``train`` false
    only cached runs are used, and an arm appears only when its first seeds are all cached.

    ``runtime()`` gives a fresh runtime with an empty frozen-prefix cache; it is called once per
    arm that has runs to train, so each arm pays for its own prefix states, as a user training that
    configuration from scratch would.
    """
    trials = arm_trials(study)
    several = len(trials) > len(STRATEGIES)  # several methods: each arm says its method
    arms = {key: _ArmRuns(study, spec, t, runtime, say, several) for key, t in trials.items()}
    runs: dict[str, list[dict]] = {key: [] for key in arms}
    wanted, budget = spec.budget.confirm_seeds, spec.budget.max_confirm_seeds
    for seed in range(budget):
        if seed >= wanted and not (all(s in arms for s in STRATEGIES) and more(runs)):
            break
        got = {key: arm.run(seed, budget, train) for key, arm in arms.items()}
        if any(run is None for run in got.values()):  # not cached, and not to be trained here
            break
        for key, run in got.items():
            runs[key].append(run)
    return {key: arm_runs for key, arm_runs in runs.items() if len(arm_runs) >= wanted}


class _ArmRuns:
    """One arm's confirmation runs: cached in the study, else trained in the arm's own runtime."""

    def __init__(
        self, study, spec: Spec, trial: FrozenTrial, runtime: RuntimeFactory | None, say: Say, named: bool
    ):
        self.study, self.spec, self.trial, self.say, self.named = study, spec, trial, say, named
        self.config = TrialConfig.from_params(trial.params)
        self.factory = runtime
        self.runtime: StudyRuntime | None = None

    def run(self, seed: int, budget: int, train: bool) -> dict | None:
        attrs = self.study.user_attrs
        key = StudyAttr.CONFIRMATION_PREFIX + _cache_key(self.spec, self.config, seed, attrs)
        cached = attrs.get(key)
        if cached is not None or not train:
            return cached
        self.runtime = self.runtime or self.factory()
        strategy = self.config.strategy.replace("_", " ")
        if self.named and self.config.strategy == FINE_TUNING:
            strategy += f", {self.config.method}"
        self.say(f"confirming {strategy} (trial {self.trial.number}) seed {seed + 1} (of at most {budget})")
        cached = run_once(self.runtime, self.config, confirmation_seed(seed))
        self.study.set_user_attr(key, cached)
        self.say(f"  test {_scores(cached)}; {cached['device_seconds']:.1f} device-seconds")
        return cached


def _cache_key(spec, config: TrialConfig, seed: int, study_attrs: dict) -> str:
    """The run's configuration, seed and training settings, and the data and weights it trains on:
    those the study's trials ran on (its identity), which `report` has checked to be the spec's now."""
    parts = {
        "version": CACHE_VERSION,
        "data": study_attrs.get(StudyAttr.DATA_DIGEST),
        "weights": study_attrs.get(StudyAttr.WEIGHTS_DIGEST),
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
        "val": fitted.final.val,
        "best_epoch": fitted.final.epoch,
        "stages": fitted.stages,
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
