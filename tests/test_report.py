"""The report on constructed studies: the decision after confirmation (a clear win, a gain inside
the noise, a loss), the provisional search-only reading, and the files with their fixed schema."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from sweeper.confirm import pack
from sweeper.errors import UserError
from sweeper.report import REPORT_KEYS, DatasetFacts, build_report, write_report, write_summary
from sweeper.spec import load_spec
from tests.conftest import write_spec

TEST_EXAMPLES = 2000
LABELS = np.arange(TEST_EXAMPLES) % 3


def _study(direction: str, trials: list[tuple[int, float, float]]) -> optuna.Study:
    """trials: (unfrozen_blocks, value, device_seconds)."""
    study = optuna.create_study(direction=direction)
    for blocks, value, seconds in trials:
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


def _runs(accuracies: list[float], seconds: float, seed: int) -> list[dict]:
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


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path, decision={"min_gain": 0.01}))


def _confirmed(spec, fe: list[float], ft: list[float]) -> dict:
    study = _study("maximize", [(0, 0.80, 2.0), (2, 0.85, 20.0)])
    confirmation = {"feature_extraction": _runs(fe, 2.0, 0), "fine_tuning": _runs(ft, 59.0, 1)}
    return build_report(study, spec, DATASET, confirmation, PROBE, LABELS)


def test_a_clear_win_on_the_test_split_picks_fine_tuning(spec):
    report = _confirmed(spec, [0.80, 0.805, 0.795], [0.90, 0.905, 0.895])
    assert report.decision == "fine_tuning" and report.confirmed
    assert report.gain == pytest.approx(0.10)
    low, high = report.gain_ci
    assert 0.01 <= low < report.gain < high
    assert report.reason.startswith("rule: the interval's lower bound clears min_gain")
    assert report.cost_ratio == pytest.approx(60.0 / 3.0)  # (1 + 59) / (1 + 2) device-seconds
    assert report.gain_per_device_hour == pytest.approx(0.10 / (57.0 / 3600))
    # small data that frozen features already separate: the rule of thumb said freeze
    assert report.matrix.quadrant == "small / similar"
    assert report.matrix.agreement == "disagrees"


def test_a_gain_inside_the_noise_keeps_feature_extraction(spec):
    report = _confirmed(spec, [0.80, 0.80, 0.80], [0.78, 0.84, 0.84])
    assert report.gain == pytest.approx(0.02)  # above min_gain, but not reliably
    assert report.decision == "feature_extraction"
    assert report.gain_ci[0] < 0.01 and "inside the noise" in report.reason
    assert report.matrix.agreement == "agrees"


def test_a_loss_keeps_feature_extraction(spec):
    report = _confirmed(spec, [0.80, 0.81, 0.79], [0.70, 0.71, 0.69])
    assert report.decision == "feature_extraction"
    assert report.gain == pytest.approx(-0.10) and report.gain_ci[1] < 0
    assert "fine-tuning loses" in report.reason


def test_search_only_reports_are_provisional(spec):
    report = build_report(_study("maximize", [(0, 0.80, 2.0), (3, 0.90, 20.0)]), spec)
    assert report.decision == "fine_tuning" and not report.confirmed
    assert report.gain == pytest.approx(0.10) and report.gain_ci is None
    assert report.reason.startswith("provisional rule") and report.metric == "val_accuracy"
    assert report.cost_ratio == pytest.approx(10.0)


def test_a_study_recorded_with_the_earlier_attributes_reports_the_same(spec):
    # sweeper 0.1 wrote strategy, device_seconds and wall_seconds as attributes of their own
    study = _study("maximize", [(0, 0.80, 2.0), (3, 0.90, 20.0)])
    earlier = optuna.create_study(direction="maximize")
    for trial in study.trials:
        attrs = {k: v for k, v in trial.user_attrs.items() if k != "seconds"}
        attrs.update(
            strategy="fine_tuning" if trial.params["unfrozen_blocks"] else "feature_extraction",
            device_seconds=trial.user_attrs["seconds"]["device"],
            wall_seconds=trial.user_attrs["seconds"]["wall"],
        )
        earlier.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                value=trial.value,
                intermediate_values=trial.intermediate_values,
                user_attrs=attrs,
            )
        )
    now, then = build_report(study, spec), build_report(earlier, spec)
    for key in ("device_seconds", "wall_seconds"):
        assert getattr(then.cost.study, key) == getattr(now.cost.study, key) > 0
    assert then.cost_ratio == pytest.approx(10.0)
    assert then.fine_tuning == now.fine_tuning and then.decision == now.decision


def test_for_a_loss_metric_lower_is_better(tmp_path):
    spec = load_spec(write_spec(tmp_path, study={"metric": "loss"}))
    report = build_report(_study("minimize", [(0, 0.50, 2.0), (2, 0.30, 10.0)]), spec)
    assert report.gain == pytest.approx(0.20)
    assert report.decision == "fine_tuning"


def test_without_a_fine_tuning_trial_feature_extraction_stands(spec):
    report = build_report(_study("maximize", [(0, 0.8, 2.0)]), spec)
    assert report.decision == "feature_extraction" and report.gain is None
    assert "no fine-tuning trial" in report.reason


def test_a_study_without_completed_trials_is_refused(spec):
    with pytest.raises(UserError, match="no completed trial"):
        build_report(optuna.create_study(direction="maximize"), spec)


def test_report_files_hold_the_fixed_schema_and_embed_the_plots(spec, tmp_path):
    study = _study("maximize", [(0, 0.8, 2.0), (0, 0.78, 2.5), (2, 0.9, 10.0), (1, 0.86, 6.0)])
    confirmation = {
        "feature_extraction": _runs([0.8, 0.81], 2.0, 0),
        "fine_tuning": _runs([0.9, 0.91], 9.0, 1),
    }
    report = build_report(study, spec, DATASET, confirmation, PROBE, LABELS)
    _, paths = write_report(report, tmp_path / "out", study)
    names = sorted(p.name for p in paths)
    assert {"report.html", "report.json", "report.md", "curves.png", "by_compute.png"} <= set(names)
    loaded = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(loaded)
    assert loaded["decision"] in ("feature_extraction", "fine_tuning")
    for arm in ("feature_extraction", "fine_tuning"):
        assert {"trial", "value", "params", "device_seconds", "mlflow_run_id", "seed_values"} <= set(
            loaded[arm]
        )
    assert {"quadrant", "advice", "agreement"} <= set(loaded["matrix"])
    assert loaded["forgetting"]["per_stage"][0]["cka"] == 0.95
    assert loaded["forgetting"]["confirmed"]["cka"] == pytest.approx(0.9)
    assert all(math.isfinite(x) for x in [loaded["gain"], *loaded["gain_ci"], loaded["cost_ratio"]])
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(loaded["plots"]) >= 4
    assert "curves.png" in (tmp_path / "out" / "report.md").read_text()


def test_several_studies_give_one_table_and_a_json_list(spec, tmp_path):
    one = build_report(_study("maximize", [(0, 0.8, 2.0), (2, 0.9, 10.0)]), spec, DATASET, None, PROBE)
    two = dataclasses.replace(one, study="other", decision="feature_extraction")
    write_summary([one, two], tmp_path, ["tiny/report.html", "other/report.html"])
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert [r["study"] for r in loaded] == ["tiny", "other"]
    table = (tmp_path / "report.md").read_text()
    assert "| [tiny](tiny/report.html) | fine tuning |" in table and "small / similar" in table


def test_plots_of_a_tiny_study_say_importances_need_more_trials(spec, tmp_path):
    from sweeper.report.plots import make_plots

    plots = {
        plot.name: plot for plot in make_plots(_study("maximize", [(0, 0.8, 2.0), (2, 0.9, 5.0)]), "accuracy")
    }
    assert {"curves.png", "by_unfrozen_blocks.png", "by_lr_ratio.png", "by_compute.png"} <= set(plots)
    assert "need more completed trials: 2 completed" in plots["importances.png"].caption
    assert all(plot.png.startswith(b"\x89PNG") for plot in plots.values())


def test_the_pareto_front_keeps_only_trials_nothing_cheaper_beats():
    from sweeper.report.plots import pareto_front

    points = [(1.0, 0.80), (2.0, 0.70), (3.0, 0.85), (3.0, 0.90), (4.0, 0.88)]
    assert pareto_front(points, maximize=True) == [(1.0, 0.80), (3.0, 0.90)]
    # for a loss, lower is better
    assert pareto_front([(1.0, 0.5), (2.0, 0.6), (3.0, 0.4)], maximize=False) == [(1.0, 0.5), (3.0, 0.4)]
