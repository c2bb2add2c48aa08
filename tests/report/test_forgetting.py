"""The report's forgetting figures: the best fine-tuning trial stage by stage, each completed
fine-tuning trial's last stage, and the confirmation runs' mean over seeds."""

from __future__ import annotations

import pytest

from sweeper.report.forgetting import summarize_forgetting
from tests.report.studies import make_runs, make_study


def test_the_best_trial_by_stage_every_trial_s_last_stage_and_the_confirmed_mean():
    study = make_study("maximize", [(0, 0.8, 2.0), (2, 0.9, 10.0), (1, 0.85, 6.0)])
    runs = make_runs([0.9, 0.91], 9.0, 1)  # runs over 5 s carry forgetting figures (cka 0.9)
    runs[1]["forgetting"] = {"stage": 1, "cka": 0.7, "weight_change": {"5": 0.04}}
    figures = summarize_forgetting(study, study.trials[1], runs)
    assert figures.trial == 1 and figures.per_stage[0]["cka"] == 0.95 and figures.cka == 0.95
    assert [t.trial for t in figures.trials] == [1, 2]  # the fine-tuning trials
    assert figures.confirmed.cka == pytest.approx(0.8) and figures.confirmed.cka_seeds == [0.9, 0.7]
    assert figures.confirmed.weight_change == {"5": pytest.approx(0.03)}
    assert figures.final_cka == pytest.approx(0.8)  # what the headline shows: the confirmed value


def test_without_a_fine_tuning_trial_there_is_nothing_to_show():
    assert summarize_forgetting(make_study("maximize", [(0, 0.8, 2.0)]), None, None) is None
