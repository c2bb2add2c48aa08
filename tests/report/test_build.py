"""The report on constructed studies: the decision after confirmation (a clear win, a gain inside
the noise, a loss), the provisional search-only reading, a loss metric, a missing arm, and studies
recorded by earlier versions."""

from __future__ import annotations

import optuna
import pytest

from sweeper.errors import UserError
from sweeper.report import build_report
from sweeper.spec import load_spec
from tests.conftest import write_spec
from tests.report.studies import confirmed_report, make_study


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path, decision={"min_gain": 0.01}))


def test_a_clear_win_on_the_test_split_picks_fine_tuning(spec):
    report = confirmed_report(spec, [0.80, 0.805, 0.795], [0.90, 0.905, 0.895])
    assert report.decision == "fine_tuning" and report.confirmed
    assert report.gain == pytest.approx(0.10)
    low, high = report.gain_ci
    assert 0.01 <= low < report.gain < high
    assert report.reason.startswith("rule: the lower bound clears min_gain")
    assert (report.seeds, report.conclusive) == (3, True)  # a clear win stops at the first look
    assert report.cost_ratio == pytest.approx(60.0 / 3.0)  # (1 + 59) / (1 + 2) device-seconds
    assert report.gain_per_device_hour == pytest.approx(0.10 / (57.0 / 3600))
    # small data that frozen features already separate: the rule of thumb said freeze
    assert report.matrix.quadrant == "small / similar"
    assert report.matrix.agreement == "disagrees"


def test_a_gain_inside_the_noise_at_the_seed_budget_is_inconclusive_and_keeps_feature_extraction(tmp_path):
    spec = load_spec(write_spec(tmp_path, budget={"confirm_seeds": 3, "max_confirm_seeds": 3}))
    report = confirmed_report(spec, [0.80, 0.80, 0.80], [0.78, 0.84, 0.84])
    assert report.gain == pytest.approx(0.02)  # above min_gain, but not reliably
    assert report.decision == "feature_extraction" and report.conclusive is False
    assert report.gain_ci[0] < 0.01 and report.reason.startswith("inconclusive: after 3 seeds")
    assert report.to_json()["conclusive"] is False and "seed budget" in report.stopped
    assert report.matrix.agreement == "agrees"


def test_a_gain_inside_the_noise_with_seeds_to_spare_is_not_yet_decided(tmp_path):
    spec = load_spec(write_spec(tmp_path, budget={"confirm_seeds": 3, "max_confirm_seeds": 8}))
    report = confirmed_report(spec, [0.80, 0.80, 0.80], [0.78, 0.84, 0.84])
    assert report.decision == "feature_extraction" and report.conclusive is False
    assert report.reason.startswith("provisional: confirmation is not finished")


def test_a_loss_keeps_feature_extraction(spec):
    report = confirmed_report(spec, [0.80, 0.81, 0.79], [0.70, 0.71, 0.69])
    assert report.decision == "feature_extraction"
    assert report.gain == pytest.approx(-0.10) and report.gain_ci[1] < 0
    assert "fine-tuning cannot reach min_gain" in report.reason and report.conclusive is True


def test_a_report_made_while_the_study_runs_says_it_is_not_complete(spec):
    study = make_study("maximize", [(0, 0.80, 2.0), (3, 0.90, 20.0)])  # 2 of the spec's 3 trials
    report = build_report(study, spec)
    assert report.complete is False and report.trials_note == "2 of 3 trials finished"
    assert report.to_json()["complete"] is False
    study.ask()  # a running trial
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    report = build_report(study, spec)
    assert report.complete is False and report.trials_note == "3 of 3 trials finished, 1 running"


def test_search_only_reports_are_provisional(spec):
    report = build_report(make_study("maximize", [(0, 0.80, 2.0), (3, 0.90, 20.0)]), spec)
    assert report.decision == "fine_tuning" and not report.confirmed
    assert report.gain == pytest.approx(0.10) and report.gain_ci is None
    assert report.reason.startswith("provisional rule") and report.metric == "val_accuracy"
    assert report.cost_ratio == pytest.approx(10.0)


def test_a_study_recorded_with_the_earlier_attributes_reports_the_same(spec):
    # sweeper 0.1 wrote strategy, device_seconds and wall_seconds as attributes of their own
    study = make_study("maximize", [(0, 0.80, 2.0), (3, 0.90, 20.0)])
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
    report = build_report(make_study("minimize", [(0, 0.50, 2.0), (2, 0.30, 10.0)]), spec)
    assert report.gain == pytest.approx(0.20)
    assert report.decision == "fine_tuning"


def test_without_a_fine_tuning_trial_feature_extraction_stands(spec):
    report = build_report(make_study("maximize", [(0, 0.8, 2.0)]), spec)
    assert report.decision == "feature_extraction" and report.gain is None
    assert "no fine-tuning trial" in report.reason


def test_a_study_without_completed_trials_is_refused(spec):
    with pytest.raises(UserError, match="no completed trial"):
        build_report(optuna.create_study(direction="maximize"), spec)
