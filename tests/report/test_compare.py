"""Fine-tuning methods side by side, on constructed studies: the best trial of each method is an
arm confirmed like the fine-tuning arm (the same seeds, the same rule against feature
extraction); the report decides with the best confirmed method and names the cheapest method
(fewest trainable parameters, then device-seconds) whose gain lies within the best's interval."""

from __future__ import annotations

import json

import pytest

from sweeper.confirm import arm_trials
from sweeper.report import build_report
from sweeper.report.method_plots import method_plots
from sweeper.report.render import render_html, render_markdown
from sweeper.report.summary import summary_rows
from sweeper.spec import load_spec
from tests.conftest import write_spec
from tests.report.studies import DATASET, LABELS, PROBE, make_runs, make_study

SECOND_METHOD = "layer_decay"  # the end-to-end study searches unfreeze and this one

# (unfrozen_blocks, validation value, device-seconds, method, trainable parameters)
TRIALS = [
    (0, 0.80, 2.0, "unfreeze", 1_155),
    (2, 0.85, 20.0, "unfreeze", 3_550_000),
    (2, 0.87, 22.0, "unfreeze", 3_550_000),
    (2, 0.86, 30.0, "lora", 40_000),
    (1, 0.84, 25.0, "lora", 20_000),
    (2, 0.83, 21.0, "layer_decay", 3_550_000),
]


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path, decision={"min_gain": 0.01}))


def _confirmed(spec, fe, unfreeze, lora, layer_decay, trials=TRIALS):
    runs = {
        "feature_extraction": make_runs(fe, 2.0, 0),
        "fine_tuning": make_runs(unfreeze, 20.0, 1),  # the best fine-tuning trial: unfreeze's
        "fine_tuning:lora": make_runs(lora, 28.0, 2),
        "fine_tuning:layer_decay": make_runs(layer_decay, 19.0, 3),
    }
    return build_report(make_study("maximize", trials), spec, DATASET, runs, PROBE, LABELS)


def test_the_best_trial_of_each_method_is_an_arm_beside_the_two_strategies():
    arms = arm_trials(make_study("maximize", TRIALS))
    # the best fine-tuning trial keeps its key; each other method's best gets its own
    assert {key: t.number for key, t in arms.items()} == {
        "feature_extraction": 0,
        "fine_tuning": 2,
        "fine_tuning:layer_decay": 5,
        "fine_tuning:lora": 3,
    }


def test_a_search_only_report_lists_each_method_but_names_no_cheapest_before_confirmation(spec):
    report = build_report(make_study("maximize", TRIALS), spec, DATASET, None, PROBE, LABELS)
    points = {p.method: p for p in report.methods}
    assert list(points) == ["feature_extraction", "layer_decay", "lora", "unfreeze"]
    assert [points[m].trials for m in ("layer_decay", "lora", "unfreeze")] == [1, 2, 2]
    assert points["lora"].value == 0.86 and points["lora"].gain == pytest.approx(0.06)
    assert report.fine_tuning.method == "unfreeze" and points["unfreeze"].picked
    assert report.cheapest_method is None and "needs confirmation runs" in report.cheapest_reason


def test_the_cheapest_method_within_the_best_s_interval_is_named(spec):
    report = _confirmed(spec, [0.80, 0.805, 0.795], [0.90, 0.905, 0.895], [0.899, 0.904, 0.894], [0.84] * 3)
    points = {p.method: p for p in report.methods}
    # unfreeze is best on the test split and decides; lora's gain lies in its interval, layer_decay's not
    assert report.decision == "fine_tuning" and report.fine_tuning.method == "unfreeze"
    assert report.gain == pytest.approx(0.10) and report.gain_ci[0] < 0.099
    assert [points[m].within_best for m in ("layer_decay", "lora", "unfreeze")] == [False, True, True]
    # lora trains 40k parameters against 3.55M: the cheapest of the two
    assert report.cheapest_method == "lora"
    assert report.cheapest_reason.startswith("lora is the cheapest method within the best's 95% interval")
    loaded = json.loads(json.dumps(report.to_json()))
    assert loaded["fine_tuning"]["method"] == "unfreeze" and loaded["cheapest_method"] == "lora"
    # on the fronts: feature extraction (cheapest), lora, unfreeze (best); layer_decay is beaten
    assert [points[m].front_params for m in points] == [True, False, True, True]
    assert "the best of 3 methods" in report.reason


def test_the_best_confirmed_method_decides_even_when_another_won_the_search(spec):
    report = _confirmed(spec, [0.80] * 3, [0.86, 0.865, 0.855], [0.90, 0.905, 0.895], [0.84] * 3)
    assert report.fine_tuning.method == "lora" and report.fine_tuning.trial == 3
    assert report.fine_tuning.value == pytest.approx(0.90) and report.gain == pytest.approx(0.10)
    # the best is the cheapest within its own interval: nothing else lies in it
    assert report.cheapest_method == "lora" and "no other method's gain lies in it" in report.cheapest_reason


def test_equal_parameter_counts_are_split_by_device_seconds(spec):
    same = [(b, v, s, m, 3_550_000 if m != "unfreeze" or b else 1_155) for b, v, s, m, _ in TRIALS]
    report = _confirmed(spec, [0.80] * 3, [0.90, 0.905, 0.895], [0.70] * 3, [0.90, 0.905, 0.895], same)
    # layer_decay ties unfreeze on the test split and on parameters, and runs 20 s against 21 s
    assert report.cheapest_method == "layer_decay"


def test_each_method_s_rule_shares_the_error_so_the_choice_errs_at_most_five_percent(spec):
    one = _confirmed(spec, [0.80] * 3, [0.90, 0.905, 0.895], [0.70] * 3, [0.70] * 3, TRIALS[:3])
    three = _confirmed(spec, [0.80] * 3, [0.90, 0.905, 0.895], [0.70] * 3, [0.70] * 3)
    assert not one.compares_methods and three.compares_methods
    # Bonferroni over methods: the per-look level of three methods is a third of one method's
    assert 1 - three.decision_confidence == pytest.approx((1 - one.decision_confidence) / 3)
    assert one.reason.startswith("rule:") and "methods" not in one.reason


def test_a_study_of_one_method_reads_as_before_and_several_get_a_section_and_a_plot(spec):
    one = _confirmed(spec, [0.80] * 3, [0.90, 0.905, 0.895], [0.70] * 3, [0.70] * 3, TRIALS[:3])
    assert "Fine-tuning methods" not in render_markdown(one) and method_plots(one) == []
    assert "Fine-tuning methods" not in render_html(one, [])
    several = _confirmed(spec, [0.80] * 3, [0.90, 0.905, 0.895], [0.899, 0.904, 0.894], [0.84] * 3)
    markdown = render_markdown(several)
    assert "## Fine-tuning methods" in markdown and "| lora (cheapest) |" in markdown
    assert "cheapest method within the best's interval: lora" in markdown
    assert "unfreeze (picked)" in render_html(several, [])
    [plot] = method_plots(several)
    assert plot.name == "by_method.png" and plot.png.startswith(b"\x89PNG")


def test_a_method_with_no_completed_trial_is_named_in_the_section_not_left_out(spec):
    # layer_decay ran two trials, both pruned: unfreeze and lora are compared, layer_decay is named
    pruned = [(b, v, s, m, p) for b, v, s, m, p in TRIALS if m != "layer_decay"]
    study = make_study("maximize", pruned)
    for value in (0.84, 0.83):
        _add_pruned(study, "layer_decay", value)
    report = build_report(study, spec, DATASET, None, PROBE, LABELS)
    assert [p.method for p in report.methods] == ["feature_extraction", "lora", "unfreeze"]
    assert report.methods_not_completed == (("layer_decay", 2),)
    line = "layer_decay: 2 trials, none completed (pruned or failed)"
    assert line in render_markdown(report) and line in render_html(report, [])
    assert report.to_json()["methods_not_completed"] == [{"method": "layer_decay", "trials": 2}]
    # one method completed beside one that did not: still a comparison, with its line
    alone = make_study("maximize", [t for t in pruned if t[3] == "unfreeze"])
    _add_pruned(alone, "lora", 0.8)
    assert build_report(alone, spec, DATASET, None, PROBE, LABELS).compares_methods


def _add_pruned(study, method: str, value: float) -> None:
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"unfrozen_blocks": 2, "method": method},
            distributions={
                "unfrozen_blocks": IntDistribution(0, 6),
                "method": CategoricalDistribution(["unfreeze", "lora", "layer_decay"]),
            },
            intermediate_values={0: value - 0.05, 1: value},
        )
    )


def test_the_table_across_studies_names_the_method_picked_only_where_methods_were_compared(spec):
    one = _confirmed(spec, [0.80] * 3, [0.90, 0.905, 0.895], [0.70] * 3, [0.70] * 3, TRIALS[:3])
    several = _confirmed(spec, [0.80] * 3, [0.86, 0.865, 0.855], [0.90, 0.905, 0.895], [0.84] * 3)
    kept = _confirmed(spec, [0.90] * 3, [0.80] * 3, [0.80] * 3, [0.80] * 3)
    assert [row[1] for row in summary_rows([one, several, kept])] == [
        "fine tuning",
        "fine tuning (lora)",
        "feature extraction",
    ]


@pytest.mark.slow
def test_a_study_of_two_methods_reports_both_confirmed_beside_feature_extraction(workdir, tracking_uri):
    from rich.console import Console

    from sweeper.commands import make_report, run_study
    from sweeper.settings import Options

    spec = write_spec(
        workdir,
        search={"method": ["unfreeze", SECOND_METHOD]},
        budget={"trials": 4, "fe_trials": 1, "pruner": "none", "confirm_seeds": 2, "max_confirm_seeds": 2},
    )
    options = Options(tracking_uri=tracking_uri)
    run_study(spec, options, Console(quiet=True))
    reported = make_report([spec], options, Console(quiet=True)).reports[0]
    loaded = json.loads((workdir / "reports" / "tiny" / "report.json").read_text())
    methods = [point["method"] for point in loaded["methods"]]
    assert methods == ["feature_extraction", *sorted(["unfreeze", SECOND_METHOD])]
    # every method confirmed on the same paired seeds, with its cost recorded by its trial
    assert reported.confirmed and reported.seeds == 2
    tuned = [p for p in reported.methods if p.method != "feature_extraction"]
    assert all(p.gain_ci is not None and p.trainable_params > 0 for p in tuned)
    assert loaded["fine_tuning"]["method"] in ("unfreeze", SECOND_METHOD)
    assert loaded["cheapest_method"] in ("unfreeze", SECOND_METHOD) and loaded["cheapest_reason"]
    page = (workdir / "reports" / "tiny" / "report.html").read_text()
    assert "Fine-tuning methods" in page and "by_method.png" in loaded["plots"]
