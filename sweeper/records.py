"""The names sweeper writes into the study DB and MLflow, spelled once, and how to read them back.

Several modules write these records (the trial, the study loop, recovery, the tracker) and others
read them (the report, the plots, the tests, users' scripts): each Optuna user-attribute and MLflow
tag name lives here, with the one derivation of a trial's strategy.

A trial's seconds are one user attribute, ``seconds`` (``{"wall": .., "device": .., "bookkeeping":
..}``): each attribute is a database write, and a cached feature-extraction trial is short enough
for a few of them to show. Its strategy is read from its ``unfrozen_blocks`` param. Studies of
earlier versions, with ``wall_seconds``, ``device_seconds`` and ``strategy`` attributes, read alike.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the records are read from Optuna trials; their names need no Optuna
    from optuna.trial import FrozenTrial

Strategy = Literal["feature_extraction", "fine_tuning"]
FEATURE_EXTRACTION: Strategy = "feature_extraction"
FINE_TUNING: Strategy = "fine_tuning"
STRATEGIES: tuple[Strategy, Strategy] = (FEATURE_EXTRACTION, FINE_TUNING)

# the fine-tuning methods (sweeper/methods.py), by the names a spec's [search] method gives them;
# a feature-extraction trial trains no block, and reads as "unfreeze"
UNFREEZE, LORA, LAYER_DECAY = "unfreeze", "lora", "layer_decay"
METHOD_NAMES: tuple[str, ...] = (UNFREEZE, LORA, LAYER_DECAY)  # those registered so far
METHOD_PARAM = "method"  # the Optuna param (drawn where [search] lists several) and the MLflow param
# the params that only a method draws, and so name it where [search] gives one method
METHOD_OWN_PARAMS = {LORA: ("lora_rank", "lora_alpha"), LAYER_DECAY: ("lr_decay",)}


class TrialAttr:
    """Optuna user attributes of a trial."""

    RUN_ID = "mlflow_run_id"  # its MLflow run (as optuna-integration's MLflowCallback names it)
    WORKER = "worker"  # host:pid of the process that runs (or ran) it
    FAIL_REASON = "fail_reason"
    PRUNE_REASON = "prune_reason"
    SECONDS = "seconds"  # {"wall", "device", "bookkeeping"}
    FORGETTING = "forgetting"  # per fine-tuning stage: {"stage", "cka", "weight_change"}
    STAGE_STARTS = "stage_starts"  # the epoch each stage begins at (fine-tuning trials)
    BASELINE = "sweeper.baseline"  # the strategy of an enqueued baseline trial
    ARM = "sweeper.arm"  # the strategy the trial was claimed for, where each arm has its budget
    STAGES = "stages"  # with rollback: per stage, {"stage", "outcome": kept | rolled_back, ...}
    BEST_EPOCH = "best_epoch"  # the epoch whose weights and value the trial ends with
    TRAINABLE_PARAMS = "trainable_params"  # parameters with requires_grad in the last stage, head included
    SHIP_BYTES = "ship_bytes"  # bytes on disk of what the method ships: head + changed blocks or adapters


class StudyAttr:
    """Optuna user attributes of a study."""

    FINGERPRINT = "sweeper.fingerprint"  # what its trials measure; a changed spec is refused
    DATA_DIGEST = "sweeper.data_digest"  # of its examples and labels (`RawData.digest`)
    WEIGHTS_DIGEST = "sweeper.weights_digest"  # of the pretrained weights (`Pretrained.digest`)
    PROBE = "sweeper.probe"  # the frozen-feature linear probe of the decision matrix
    SCREEN = "sweeper.screen"  # the candidate screen that kept the study (`screen.ScreenResult.to_json`)
    CONFIRMATION_PREFIX = "sweeper.confirm."  # + a key: one cached confirmation run
    FT_BASELINE_QUEUED = "sweeper.fine_tuning_baseline_queued"  # once the feature-extraction arm is done


class Tag:
    """MLflow tags of the study's parent run and of each trial's run."""

    ROLE = "sweeper.role"  # "study" on the parent run
    STRATEGY = "sweeper.strategy"
    REASON = "sweeper.reason"  # why a trial failed or was pruned
    STAGE_STARTS = "sweeper.stage_starts"
    STAGES = "sweeper.stages"  # with rollback: "1:kept,2:rolled_back" (stage:outcome)
    UNFROZEN_BLOCKS = "unfrozen_blocks"
    METHOD = "sweeper.method"  # the trial's fine-tuning method ("unfreeze" for feature extraction)
    DECISION = "sweeper.decision"  # on the parent run: the report's decision
    CONFIRMED = "sweeper.confirmed"  # on the parent run: whether the test split confirmed it
    STUDY = "optuna.study"
    TRIAL = "optuna.trial"
    STATE = "optuna.state"


def strategy_for(unfrozen_blocks: int) -> Strategy:
    """Feature extraction when no block is unfrozen, else fine-tuning."""
    return FINE_TUNING if unfrozen_blocks else FEATURE_EXTRACTION


def strategy_of(trial: FrozenTrial) -> Strategy | None:
    """The trial's strategy; ``None`` for a trial that stopped before it had parameters."""
    if "unfrozen_blocks" not in trial.params:
        return trial.user_attrs.get("strategy")
    return strategy_for(trial.params["unfrozen_blocks"])


def method_from_params(params: dict) -> str:
    """The method of a configuration from its params: the ``method`` param where [search] listed
    several, else the method whose own params it has, else staged unfreezing."""
    if not params.get("unfrozen_blocks"):
        return UNFREEZE
    if METHOD_PARAM in params:
        return params[METHOD_PARAM]
    for method, own in METHOD_OWN_PARAMS.items():
        if any(name in params for name in own):
            return method
    return UNFREEZE


def method_of(trial: FrozenTrial) -> str | None:
    """The trial's fine-tuning method; ``None`` for a trial that stopped before it had parameters."""
    if "unfrozen_blocks" not in trial.params:
        return None
    return method_from_params(trial.params)


def seconds_of(trial: FrozenTrial, kind: str) -> float:
    """The trial's ``wall``, ``device`` or ``bookkeeping`` seconds (0 where not recorded)."""
    recorded = trial.user_attrs.get(TrialAttr.SECONDS)
    if isinstance(recorded, dict):
        return float(recorded.get(kind, 0.0))
    return float(trial.user_attrs.get(f"{kind}_seconds", 0.0))


def stage_starts_of(trial: FrozenTrial) -> tuple[int, ...]:
    """The epochs (numbered across stages, from 0) at which the trial's stages began: recorded by
    fine-tuning trials; a feature-extraction trial has one stage. Fine-tuning trials of earlier
    versions recorded them in MLflow only, and read as one stage here."""
    return tuple(trial.user_attrs.get(TrialAttr.STAGE_STARTS) or (0,))


def worker_id(pid: int | None = None) -> str:
    """``host:pid`` of a worker process (this one by default), as its trials record it."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"
