"""An arm of the report: the best trial of a strategy (or of a fine-tuning method) and, once
confirmed, its confirmation runs summarised over seeds."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from sweeper.records import FINE_TUNING, TrialAttr, method_of, seconds_of, strategy_of
from sweeper.report.model import Arm, ArmConfirmation
from sweeper.rollback import ROLLED_BACK


def arm_of(study: optuna.Study, best: FrozenTrial | None, runs: list[dict] | None, metric: str) -> Arm | None:
    """The arm of ``best`` (None without a trial); its search figures cover every trial of its
    strategy, and its confirmed figures, with ``runs``, replace the search's."""
    if best is None:
        return None
    strategy = strategy_of(best)
    everything = [t for t in study.get_trials(deepcopy=False) if strategy_of(t) == strategy]
    arm = Arm(
        trial=best.number,
        params=best.params,
        mlflow_run_id=best.user_attrs.get(TrialAttr.RUN_ID),
        search_value=best.value,
        value=best.value,
        device_seconds=seconds_of(best, "device"),
        wall_seconds=seconds_of(best, "wall"),
        trials=len(everything),
        arm_device_seconds=sum(seconds_of(t, "device") for t in everything),
        arm_wall_seconds=sum(seconds_of(t, "wall") for t in everything),
        stages=best.user_attrs.get(TrialAttr.STAGES),
        method=method_of(best) if strategy == FINE_TUNING else None,
        trainable_params=best.user_attrs.get(TrialAttr.TRAINABLE_PARAMS),
        ship_bytes=best.user_attrs.get(TrialAttr.SHIP_BYTES),
    )
    return _confirmed(arm, runs, metric) if runs else arm


def _confirmed(arm: Arm, runs: list[dict], metric: str) -> Arm:
    seed_values = [run["test"][metric] for run in runs]
    # one run from scratch: the prefix states once (the arm's first seed computed them), then training
    prefix = max(run["prefix_seconds"] for run in runs)
    train = float(np.mean([run["train_seconds"] for run in runs]))
    confirmation = ArmConfirmation(
        seed_values=seed_values,
        seed_std=float(np.std(seed_values, ddof=1)) if len(runs) > 1 else None,
        test={k: float(np.mean([run["test"][k] for run in runs])) for k in runs[0]["test"]},
        confirm_val_value=float(np.mean([run["val"][metric] for run in runs])),
        prefix_seconds=prefix,
        train_seconds=train,
        rolled_back=[
            [s["stage"] for s in run.get("stages", []) if s["outcome"] == ROLLED_BACK] for run in runs
        ],
    )
    # the confirmed figures replace the search's
    return dataclasses.replace(
        arm,
        value=float(np.mean(seed_values)),
        device_seconds=prefix + train,
        wall_seconds=prefix + float(np.mean([r["wall_seconds"] - r["prefix_seconds"] for r in runs])),
        confirmation=confirmation,
    )
