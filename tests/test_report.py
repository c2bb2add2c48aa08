"""The decision rule on constructed studies, and the report files with their fixed schema."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from sweeper.errors import UserError
from sweeper.report import REPORT_KEYS, build_report, write_report
from sweeper.spec import load_spec
from tests.conftest import write_spec


def _study(direction: str, trials: list[tuple[int, float, float]]) -> optuna.Study:
    """trials: (unfrozen_blocks, value, device_seconds)."""
    study = optuna.create_study(direction=direction)
    for blocks, value, seconds in trials:
        study.add_trial(
            optuna.trial.create_trial(
                params={"unfrozen_blocks": blocks, "head_lr": 1e-3},
                distributions={
                    "unfrozen_blocks": IntDistribution(0, 6),
                    "head_lr": FloatDistribution(1e-4, 1e-2, log=True),
                },
                value=value,
                user_attrs={
                    "strategy": "feature_extraction" if blocks == 0 else "fine_tuning",
                    "device_seconds": seconds,
                    "wall_seconds": seconds + 1,
                    "mlflow_run_id": f"run{len(study.trials)}",
                },
            )
        )
    return study


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path, decision={"min_gain": 0.01}))


def test_a_clear_fine_tuning_win_picks_fine_tuning(spec):
    report = build_report(
        _study("maximize", [(0, 0.80, 2.0), (0, 0.78, 2.0), (3, 0.90, 20.0), (6, 0.85, 40.0)]), spec
    )
    assert report["decision"] == "fine_tuning"
    assert report["gain"] == pytest.approx(0.10)
    assert report["feature_extraction"]["trial"] == 0 and report["fine_tuning"]["trial"] == 2
    assert report["cost_ratio"] == pytest.approx(10.0)
    assert "≥ min_gain 0.01" in report["reason"]


def test_a_gain_below_min_gain_keeps_feature_extraction(spec):
    report = build_report(_study("maximize", [(0, 0.800, 2.0), (2, 0.805, 10.0)]), spec)
    assert report["decision"] == "feature_extraction"
    assert report["gain"] == pytest.approx(0.005)
    assert "< min_gain 0.01" in report["reason"]


def test_a_fine_tuning_loss_keeps_feature_extraction(spec):
    report = build_report(_study("maximize", [(0, 0.80, 2.0), (2, 0.70, 10.0)]), spec)
    assert report["decision"] == "feature_extraction"
    assert report["gain"] == pytest.approx(-0.10)


def test_for_a_loss_metric_lower_is_better(tmp_path):
    spec = load_spec(write_spec(tmp_path, study={"metric": "loss"}))
    report = build_report(_study("minimize", [(0, 0.50, 2.0), (2, 0.30, 10.0)]), spec)
    assert report["gain"] == pytest.approx(0.20)
    assert report["decision"] == "fine_tuning"


def test_without_a_fine_tuning_trial_feature_extraction_stands(spec):
    report = build_report(_study("maximize", [(0, 0.8, 2.0)]), spec)
    assert report["decision"] == "feature_extraction" and report["gain"] is None
    assert "no fine-tuning trial" in report["reason"]


def test_a_study_without_completed_trials_is_refused(spec):
    with pytest.raises(UserError, match="no completed trial"):
        build_report(optuna.create_study(direction="maximize"), spec)


def test_report_files_hold_the_fixed_schema(spec, tmp_path):
    report = build_report(
        _study("maximize", [(0, 0.8, 2.0), (2, 0.9, 10.0)]), spec, {"train_examples": 54, "per_class_min": 18}
    )
    paths = write_report(report, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["report.html", "report.json", "report.md"]
    loaded = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(loaded)
    assert loaded["decision"] in ("feature_extraction", "fine_tuning")
    for arm in ("feature_extraction", "fine_tuning"):
        assert {"trial", "value", "params", "device_seconds", "mlflow_run_id"} <= set(loaded[arm])
    assert loaded["matrix"] == {"train_examples": 54, "per_class_min": 18}
    assert "fine tuning" in (tmp_path / "out" / "report.md").read_text()
    assert "<table>" in (tmp_path / "out" / "report.html").read_text()
