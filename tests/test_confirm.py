"""Confirmation on a real tiny study (MiniLM on VADER words): the search never touches the test
split; `report` re-trains the best config of each arm on the training split, scores it on the
test split, and caches the runs in the study so that the next report trains nothing."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from mlflow import MlflowClient

from sweeper import commands, confirm, fit
from sweeper import train as train_module
from sweeper.config import TrialConfig
from sweeper.records import StudyAttr, strategy_of
from sweeper.runtime import StudyRuntime
from sweeper.settings import Options
from sweeper.spec import load_spec
from tests.conftest import write_spec


@pytest.fixture
def splits_used(monkeypatch) -> dict[str, list[str]]:
    """Which split each state source came from, and what trained, validated and was scored on."""
    used: dict[str, list[str]] = {"sources": [], "trained": [], "validated": [], "scored": []}
    source, evaluate, train_staged = StudyRuntime.source, train_module.evaluate, train_module.train_staged

    def recorded_source(self, model, split, cut):
        state_source = source(self, model, split, cut)
        state_source.split = split
        used["sources"].append(split)
        return state_source

    def recorded_evaluate(model, data, settings, features=None):
        used["scored"].append(data.split)
        return evaluate(model, data, settings, features)

    def recorded_train_staged(
        model, plan, optimizer, head_lr, sources_at, settings, on_epoch, *more, **named
    ):
        def sources(start):
            train_source, val_source = sources_at(start)
            used["trained"].append(train_source.split)
            used["validated"].append(val_source.split)
            return train_source, val_source

        return train_staged(model, plan, optimizer, head_lr, sources, settings, on_epoch, *more, **named)

    monkeypatch.setattr(StudyRuntime, "source", recorded_source)
    monkeypatch.setattr(train_module, "evaluate", recorded_evaluate)
    monkeypatch.setattr(confirm, "evaluate", recorded_evaluate)
    monkeypatch.setattr(fit, "train_staged", recorded_train_staged)
    return used


@pytest.mark.slow
def test_only_confirmation_touches_the_test_split_and_its_runs_are_cached(
    workdir, tracking_uri, splits_used, monkeypatch
):
    folder = workdir / "studies"
    folder.mkdir()
    spec = write_spec(
        folder, budget={"trials": 3, "pruner": "none", "confirm_seeds": 2, "max_confirm_seeds": 2}
    )
    options = Options(tracking_uri=tracking_uri)

    # the search: trains on train, validates on val, never reads test
    searched = commands.run_study(spec, Options(trials=3, tracking_uri=tracking_uri)).report
    assert set(splits_used["trained"]) == {"train"} and set(splits_used["validated"]) == {"val"}
    assert "test" not in splits_used["sources"] and "test" not in splits_used["scored"]
    assert not searched.confirmed and searched.reason.startswith("provisional rule")

    # confirmation: 2 arms x 2 seeds, trained on train and scored on test once each
    for key in splits_used:
        splits_used[key].clear()
    report = commands.make_report([spec], options).reports[0]
    assert set(splits_used["trained"]) == {"train"} and set(splits_used["validated"]) == {"val"}
    assert splits_used["scored"].count("test") == 4
    assert report.confirmed and report.metric == "test_accuracy"
    low, high = report.gain_ci
    assert low <= report.gain <= high
    assert len(report.fine_tuning.confirmation.seed_values) == 2
    assert math.isfinite(report.cost_ratio) and report.matrix.quadrant == "small / similar"
    assert 0 < report.forgetting.confirmed.cka <= 1
    _forgetting_is_logged_per_stage(spec, tracking_uri)

    # a second report, of the folder: nothing trains (the model loads, to check the study's
    # identity, but building a runtime to train in would fail here)
    monkeypatch.setattr(commands, "StudyRuntime", _must_not_train)
    for key in splits_used:
        splits_used[key].clear()
    again = commands.make_report([folder], options)
    assert not splits_used["scored"]
    assert again.reports[0].gain == report.gain
    listed = json.loads((workdir / "reports" / "report.json").read_text())
    assert [entry["study"] for entry in listed] == ["tiny"]
    assert (workdir / "reports" / "tiny" / "report.html").is_file()


@pytest.mark.slow
def test_confirmation_adds_paired_seeds_while_asked_up_to_its_budget_and_a_rerun_replays_them(
    workdir, tracking_uri
):
    from sweeper.spec import load_spec
    from tests.conftest import runtime_for

    spec_path = write_spec(workdir, budget={"trials": 2, "confirm_seeds": 2, "max_confirm_seeds": 4})
    commands.run_study(spec_path, Options(tracking_uri=tracking_uri))
    study = optuna.load_study(study_name="tiny", storage="sqlite:///sweeper.db")
    spec, asked = load_spec(spec_path), []

    def more(runs):  # wants more seeds every time: the budget stops it
        asked.append(len(runs["fine_tuning"]))
        return True

    runs = confirm.confirm(study, spec, lambda: runtime_for(spec_path), more=more)
    assert asked == [2, 3] and [len(runs[arm]) for arm in ("feature_extraction", "fine_tuning")] == [4, 4]
    assert [r["seed"] for r in runs["fine_tuning"]] == [50_000, 50_001, 50_002, 50_003]  # paired seeds
    assert [r["seed"] for r in runs["feature_extraction"]] == [r["seed"] for r in runs["fine_tuning"]]
    # from the cache (train=False): the same looks give the same runs; fewer looks, fewer seeds
    assert confirm.confirm(study, spec, None, train=False, more=lambda r: True) == runs
    fewer = confirm.confirm(study, spec, None, train=False, more=lambda r: len(r["fine_tuning"]) < 3)
    assert [len(fewer[arm]) for arm in fewer] == [3, 3]
    # a run says which epoch it ended at and what became of each stage
    tuned = runs["fine_tuning"][0]
    assert tuned["val"]["accuracy"] == max(s["best_value"] for s in tuned["stages"])
    assert {s["outcome"] for s in tuned["stages"]} <= {"kept", "rolled_back"} and "best_epoch" in tuned


def _forgetting_is_logged_per_stage(spec, tracking_uri: str) -> None:
    study = optuna.load_study(study_name="tiny", storage="sqlite:///sweeper.db")
    tuned = [t for t in study.trials if strategy_of(t) == "fine_tuning"]
    assert tuned
    client = MlflowClient(tracking_uri)
    for t in tuned:
        stages = t.params["unfrozen_blocks"]  # one block per stage in this spec
        assert [entry["stage"] for entry in t.user_attrs["forgetting"]] == list(range(1, stages + 1))
        history = client.get_metric_history(t.user_attrs["mlflow_run_id"], "forgetting_cka")
        assert sorted(m.step for m in history) == list(range(1, stages + 1))


def _must_not_train(*_args, **_kwargs):
    raise AssertionError("the report trained again instead of reading its cached runs")


def test_confirmation_runs_are_keyed_by_the_data_and_the_weights_the_study_ran_on(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    config = TrialConfig(0, 1e-3, 1)
    recorded = {StudyAttr.DATA_DIGEST: "data-1", StudyAttr.WEIGHTS_DIGEST: "weights-1"}
    key = confirm._cache_key(spec, config, 0, recorded)
    assert confirm._cache_key(spec, config, 0, dict(recorded)) == key
    assert confirm._cache_key(spec, config, 0, {**recorded, StudyAttr.DATA_DIGEST: "data-2"}) != key
    assert confirm._cache_key(spec, config, 0, {**recorded, StudyAttr.WEIGHTS_DIGEST: "weights-2"}) != key
