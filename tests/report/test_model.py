"""report.json keeps its fixed schema: the same keys in the same places, with the confirmation's
keys absent (not null) until the test split confirmed. Since issue 11 ``gain_ci`` is one interval
for both noise sources (``gain_ci_seeds`` and ``gain_ci_test_examples`` went), and the sequential
confirmation and the study's completeness have keys of their own; since issue 13 the methods
comparison adds ``methods``, ``cheapest_method``, ``cheapest_reason`` and ``methods_not_completed``, each arm its
``trainable_params`` and ``ship_bytes``, and the fine-tuning arm its ``method``."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sweeper.report import build_report
from sweeper.spec import load_spec
from tests.conftest import write_spec
from tests.report.studies import DATASET, LABELS, PROBE, make_runs, make_study

TOP = {
    "study", "decision", "confirmed", "feature_extraction", "fine_tuning", "gain", "gain_ci",
    "confidence", "seeds", "conclusive", "stopped", "decision_interval", "decision_confidence",
    "seed_share", "complete", "trials_note", "cost_ratio", "gain_per_device_hour",
    "cost", "matrix", "forgetting", "reason", "metric", "direction", "min_gain", "evidence", "plots",
    "dropped_examples", "methods", "cheapest_method", "cheapest_reason", "methods_not_completed",
}  # fmt: skip
ARM = {
    "trial", "params", "mlflow_run_id", "search_value", "value", "device_seconds", "wall_seconds",
    "trials", "arm_device_seconds", "arm_wall_seconds", "stages", "trainable_params", "ship_bytes",
}  # fmt: skip
POINT = {
    "method", "trial", "value", "trainable_params", "ship_bytes", "device_seconds", "trials", "gain",
    "gain_ci", "verdict", "picked", "within_best", "front_params", "front_seconds",
}  # fmt: skip
CONFIRMED_ARM = ARM | {
    "seed_values",
    "seed_std",
    "test",
    "confirm_val_value",
    "prefix_seconds",
    "train_seconds",
    "rolled_back",
}
MATRIX = {
    "train_examples", "per_class", "per_class_min", "per_class_mean", "probe_balanced_accuracy",
    "probe_score", "size", "similarity", "quadrant", "advice", "expected", "agreement", "thresholds",
}  # fmt: skip
FORGETTING = {"trial", "per_stage", "cka", "weight_change", "weight_change_mean", "trials"}


@pytest.fixture
def study():
    return make_study("maximize", [(0, 0.8, 2.0), (2, 0.9, 10.0)])


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path))


def _json(report) -> dict:
    return json.loads(json.dumps(report.to_json()))  # as a script reads report.json


def test_a_search_only_report_has_the_schema_without_the_confirmation_keys(study, spec):
    loaded = _json(build_report(study, spec, DATASET, None, PROBE, LABELS))
    assert set(loaded) == TOP and loaded["metric"] == "val_accuracy" and loaded["confirmed"] is False
    assert set(loaded["feature_extraction"]) | {"method"} == set(loaded["fine_tuning"]) == ARM | {"method"}
    assert [point["method"] for point in loaded["methods"]] == ["feature_extraction", "unfreeze"]
    assert all(set(point) == POINT for point in loaded["methods"])
    assert set(loaded["cost"]) == {"study", "confirmation"}
    assert set(loaded["cost"]["study"]) == {"trials", "device_seconds", "wall_seconds", "elapsed_seconds"}
    assert set(loaded["cost"]["confirmation"]) == {"runs", "device_seconds", "wall_seconds"}
    assert set(loaded["matrix"]) == MATRIX and set(loaded["forgetting"]) == FORGETTING
    assert loaded["gain_ci"] is None and loaded["plots"] == []
    assert (loaded["seeds"], loaded["conclusive"], loaded["decision_interval"]) == (0, None, None)


def test_a_confirmed_report_adds_the_confirmation_keys_and_nothing_else(study, spec):
    runs = {
        "feature_extraction": make_runs([0.8, 0.81], 2.0, 0),
        "fine_tuning": make_runs([0.9, 0.91], 9.0, 1),
    }
    loaded = _json(build_report(study, spec, DATASET, runs, PROBE, LABELS))
    assert set(loaded) == TOP and loaded["metric"] == "test_accuracy" and loaded["confirmed"] is True
    assert (
        set(loaded["feature_extraction"]) | {"method"}
        == set(loaded["fine_tuning"])
        == CONFIRMED_ARM | {"method"}
    )
    assert set(loaded["forgetting"]) == FORGETTING | {"confirmed"}
    assert set(loaded["forgetting"]["confirmed"]) == {
        "cka",
        "cka_seeds",
        "weight_change",
        "weight_change_mean",
    }
    assert len(loaded["gain_ci"]) == len(loaded["decision_interval"]) == 2 and loaded["seeds"] == 2
    assert loaded["conclusive"] in (True, False) and 0 <= loaded["seed_share"] <= 1


def test_the_typed_report_reads_as_its_json_says(study, spec):
    report = build_report(study, spec, DATASET, None, PROBE, LABELS)
    loaded = _json(report)
    assert loaded["fine_tuning"]["search_value"] == report.fine_tuning.search_value == 0.9
    assert loaded["matrix"]["quadrant"] == report.matrix.quadrant
    assert report.split == "val"


def test_report_json_counts_the_examples_the_data_left_out(study, spec):
    # [data] on_missing = "drop": the count travels from the data's facts into report.json
    assert _json(build_report(study, spec, DATASET, None, PROBE, LABELS))["dropped_examples"] == 0
    holey = dataclasses.replace(DATASET, dropped=7)
    assert _json(build_report(study, spec, holey, None, PROBE, LABELS))["dropped_examples"] == 7
