"""The search space of a study: the only module that calls ``trial.suggest_*``.

Parameter names are the [search] keys of the spec, and the same names become the MLflow params of
each trial's run, so the optuna CLI, optuna-dashboard and the MLflow UI all speak alike.
"""

from __future__ import annotations

import optuna

from sweeper.config import TrialConfig
from sweeper.records import FEATURE_EXTRACTION, FINE_TUNING, Strategy
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
    return TrialConfig(
        unfrozen,
        head_lr,
        head_epochs,
        lr_ratio=trial.suggest_float("lr_ratio", *bounds(search.lr_ratio), log=True),
        stage_epochs=trial.suggest_int("stage_epochs", *bounds(search.stage_epochs)),
        blocks_per_stage=trial.suggest_int("blocks_per_stage", *bounds(search.blocks_per_stage)),
    )


# the practice: the backbone learns 10x to 100x slower than the head
_PRACTICE_LR_RATIO = geometric_mid(0.01, 0.1)


def baseline_configs(search: SearchSection) -> list[TrialConfig]:
    """The first trial of each arm: pure feature extraction and full fine-tuning at the
    practice's ratio (within the space)."""
    head_lr = geometric_mid(*bounds(search.head_lr))
    low_blocks, high_blocks = bounds(search.unfrozen_blocks)
    feature_extraction = TrialConfig(0, head_lr, bounds(search.head_epochs)[1])
    low_ratio, high_ratio = bounds(search.lr_ratio)
    full_fine_tuning = TrialConfig(
        high_blocks,
        head_lr,
        bounds(search.head_epochs)[0],
        lr_ratio=min(max(_PRACTICE_LR_RATIO, low_ratio), high_ratio),
        stage_epochs=bounds(search.stage_epochs)[1],
        blocks_per_stage=bounds(search.blocks_per_stage)[1],
    )
    configs = []
    if low_blocks == 0:
        configs.append(feature_extraction)
    if high_blocks > 0:
        configs.append(full_fine_tuning)
    return configs


def max_total_epochs(search: SearchSection) -> int:
    """The longest plan the space allows: the pruner's max resource."""
    blocks = bounds(search.unfrozen_blocks)[1]
    per_stage = bounds(search.blocks_per_stage)[0]
    stages = -(-blocks // per_stage)
    return bounds(search.head_epochs)[1] + stages * bounds(search.stage_epochs)[1]
