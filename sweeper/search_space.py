"""The search space of a study: the only module that calls ``trial.suggest_*``.

Parameter names are the [search] keys of the spec, and the same names become the MLflow params of
each trial's run, so the optuna CLI, optuna-dashboard and the MLflow UI all speak alike.
"""

from __future__ import annotations

import optuna

from sweeper.config import TrialConfig
from sweeper.records import (
    FEATURE_EXTRACTION,
    FINE_TUNING,
    LAYER_DECAY,
    LORA,
    METHOD_PARAM,
    UNFREEZE,
    Strategy,
)
from sweeper.spec import SearchSection, bounds, geometric_mid


def suggest_config(trial: optuna.Trial, search: SearchSection, arm: Strategy | None = None) -> TrialConfig:
    """A configuration from the space; ``arm`` (where each arm has its budget) keeps it to one."""
    low, high = bounds(search.unfrozen_blocks)
    if arm == FEATURE_EXTRACTION:
        low = high = 0
    elif arm == FINE_TUNING:
        low = max(low, 1)
    unfrozen = trial.suggest_int("unfrozen_blocks", low, high)
    head_lr = trial.suggest_float("head_lr", *bounds(search.head_lr), log=True)
    head_epochs = trial.suggest_int("head_epochs", *bounds(search.head_epochs))
    if unfrozen == 0:
        return TrialConfig(unfrozen, head_lr, head_epochs)
    methods = search.methods
    method = trial.suggest_categorical(METHOD_PARAM, methods) if len(methods) > 1 else methods[0]
    return TrialConfig(
        unfrozen,
        head_lr,
        head_epochs,
        # LoRA's adapters are new weights, learning at head_lr: no ratio to draw
        lr_ratio=None
        if method == LORA
        else trial.suggest_float("lr_ratio", *bounds(search.lr_ratio), log=True),
        stage_epochs=trial.suggest_int("stage_epochs", *bounds(search.stage_epochs)),
        blocks_per_stage=trial.suggest_int("blocks_per_stage", *bounds(search.blocks_per_stage)),
        method=method,
        **_method_params(trial, search, method),
    )


def _method_params(trial: optuna.Trial, search: SearchSection, method: str) -> dict:
    """The method's own parameters, drawn even where fixed (so that a trial's params name its method)."""
    if method == LORA:
        return {
            "lora_rank": trial.suggest_int("lora_rank", *bounds(search.lora_rank), log=True),
            "lora_alpha": trial.suggest_float("lora_alpha", *bounds(search.lora_alpha), log=True),
        }
    if method == LAYER_DECAY:
        return {"lr_decay": trial.suggest_float("lr_decay", *bounds(search.lr_decay))}
    return {}


def optuna_params(config: TrialConfig, search: SearchSection) -> dict:
    """The configuration as the Optuna params a trial of this space draws (to enqueue it)."""
    params = config.params()
    if config.unfrozen_blocks and len(search.methods) > 1:
        params[METHOD_PARAM] = config.method
    return params


# the practice: the backbone learns 10x to 100x slower than the head
_PRACTICE_LR_RATIO = geometric_mid(0.01, 0.1)


def baseline_configs(search: SearchSection) -> list[TrialConfig]:
    """The first trials of each arm: pure feature extraction, then full fine-tuning at the
    practice's ratio (within the space) with each method the space lists, staged unfreezing
    first. Every method so gets one trial with sensible settings, run before the pruner has three
    completed fine-tuning trials to judge by: a method is never left without a completed trial
    because TPE drew it twice at bad settings."""
    head_lr = geometric_mid(*bounds(search.head_lr))
    low_blocks, high_blocks = bounds(search.unfrozen_blocks)
    configs = []
    if low_blocks == 0:
        configs.append(TrialConfig(0, head_lr, bounds(search.head_epochs)[1]))
    if high_blocks > 0:
        methods = sorted(search.methods, key=lambda method: method != UNFREEZE)
        configs += [_full_fine_tuning(search, head_lr, method) for method in methods]
    return configs


def _full_fine_tuning(search: SearchSection, head_lr: float, method: str) -> TrialConfig:
    low_ratio, high_ratio = bounds(search.lr_ratio)
    own = {
        LORA: {
            "lora_rank": round(geometric_mid(*bounds(search.lora_rank))),
            "lora_alpha": geometric_mid(*bounds(search.lora_alpha)),
        },
        LAYER_DECAY: {"lr_decay": sum(bounds(search.lr_decay)) / 2},
    }.get(method, {})
    return TrialConfig(
        bounds(search.unfrozen_blocks)[1],
        head_lr,
        bounds(search.head_epochs)[0],
        lr_ratio=None if method == LORA else min(max(_PRACTICE_LR_RATIO, low_ratio), high_ratio),
        stage_epochs=bounds(search.stage_epochs)[1],
        blocks_per_stage=bounds(search.blocks_per_stage)[1],
        method=method,
        **own,
    )


def max_total_epochs(search: SearchSection) -> int:
    """The longest plan the space allows: the pruner's max resource."""
    blocks = bounds(search.unfrozen_blocks)[1]
    per_stage = bounds(search.blocks_per_stage)[0]
    stages = -(-blocks // per_stage)
    return bounds(search.head_epochs)[1] + stages * bounds(search.stage_epochs)[1]
