"""Constructed studies and confirmation runs for the report's tests: trials with chosen values
and seconds, runs whose predictions are right on a chosen share of the test examples."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeper.confirm import pack
from sweeper.records import TrialAttr
from sweeper.report import DatasetFacts, Report, build_report

METHODS = ("layer_decay", "lora", "unfreeze")
TEST_EXAMPLES = 2000
LABELS = np.arange(TEST_EXAMPLES) % 3


def make_study(direction: str, trials: list[tuple]) -> optuna.Study:
    """trials: (unfrozen_blocks, value, device_seconds), or with (method, trainable_params) after:
    a study that searched the fine-tuning method (the "method" param) and recorded its cost."""
    study = optuna.create_study(direction=direction)
    for blocks, value, seconds, *method in trials:
        params = {"unfrozen_blocks": blocks, "head_lr": 1e-3, "head_epochs": 1}
        distributions = {
            "unfrozen_blocks": IntDistribution(0, 6),
            "head_lr": FloatDistribution(1e-4, 1e-2, log=True),
            "head_epochs": IntDistribution(1, 3),
        }
        attrs = {
            "seconds": {"device": seconds, "wall": seconds + 1, "bookkeeping": 0.01},
            "mlflow_run_id": f"run{len(study.trials)}",
        }
        if blocks:
            params.update(lr_ratio=0.05, stage_epochs=1, blocks_per_stage=1)
            distributions.update(
                lr_ratio=FloatDistribution(0.01, 1.0, log=True),
                stage_epochs=IntDistribution(1, 2),
                blocks_per_stage=IntDistribution(1, 2),
            )
            attrs["forgetting"] = [{"stage": 1, "cka": 0.95, "weight_change": {"5": 0.01}}]
        if method:
            name, trainable = method
            if blocks:
                params["method"] = name
                distributions["method"] = CategoricalDistribution(METHODS)
            attrs |= {TrialAttr.TRAINABLE_PARAMS: trainable, TrialAttr.SHIP_BYTES: 4 * trainable}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=value,
                intermediate_values={0: value - 0.05, 1: value},
                user_attrs=attrs,
            )
        )
    return study


def make_runs(accuracies: list[float], seconds: float, seed: int) -> list[dict]:
    """Confirmation runs with these test accuracies: predictions right on that share of examples."""
    rng = np.random.default_rng(seed)
    runs = []
    for i, accuracy in enumerate(accuracies):
        predictions = (LABELS + 1) % 3
        right = rng.permutation(TEST_EXAMPLES)[: round(accuracy * TEST_EXAMPLES)]
        predictions[right] = LABELS[right]
        scores = {"accuracy": accuracy, "macro_f1": accuracy, "loss": 1 - accuracy}
        runs.append(
            {
                "seed": i,
                "test": scores,
                "val": scores,
                "prefix_seconds": 1.0,
                "train_seconds": seconds,
                "device_seconds": seconds + 1.0,
                "wall_seconds": seconds + 2.0,
                "predictions": pack(predictions.astype(np.uint16)),
                "losses": pack(np.full(TEST_EXAMPLES, 1 - accuracy, dtype=np.float16)),
                "forgetting": {"stage": 1, "cka": 0.9, "weight_change": {"5": 0.02}} if seconds > 5 else None,
            }
        )
    return runs


DATASET = DatasetFacts(
    train_examples=300,
    val_examples=90,
    test_examples=TEST_EXAMPLES,
    per_class={"a": 100, "b": 100, "c": 100},
    per_class_min=100,
    per_class_mean=100.0,
)
PROBE = {"balanced_accuracy": 0.8, "num_classes": 3}


def confirmed_report(spec, fe: list[float], ft: list[float]) -> Report:
    study = make_study("maximize", [(0, 0.80, 2.0), (2, 0.85, 20.0)])
    confirmation = {"feature_extraction": make_runs(fe, 2.0, 0), "fine_tuning": make_runs(ft, 59.0, 1)}
    return build_report(study, spec, DATASET, confirmation, PROBE, LABELS)
