"""The commands end to end on a real tiny study: typed outcomes that say where everything is, the
study's figures and decision on its parent run after `study` and after `report`, and one exit code
per way a command can end."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from rich.console import Console

from sweeper.commands import exit_code, make_report, run_study
from sweeper.errors import UserError
from sweeper.interrupts import Interrupted
from sweeper.settings import Options
from sweeper.study import TrialsKeepFailing
from sweeper.workers import WorkersStopped
from tests.conftest import write_spec


def _parent(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    return client.search_runs([experiment], "tags.`sweeper.role` = 'study'")[0]


@pytest.mark.slow
def test_study_and_report_leave_the_study_s_figures_and_decision_on_its_parent_run(workdir, tracking_uri):
    spec = write_spec(workdir, budget={"trials": 2, "pruner": "none", "confirm_seeds": 2})
    options = Options(tracking_uri=tracking_uri)
    studied = run_study(spec, options, Console(quiet=True))
    lines = "\n".join(studied.lines())
    assert "decision:" in lines and f"mlflow ui --backend-store-uri {tracking_uri}" in lines
    assert "#/experiments/" in lines and "reports/tiny/report.md" in lines

    parent = _parent(tracking_uri)
    metrics, tags = parent.data.metrics, parent.data.tags
    assert (metrics["trials_complete"], metrics["trials_finished"], metrics["trials_fail"]) == (2, 2, 0)
    assert tags["sweeper.decision"] == studied.report.decision and tags["sweeper.confirmed"] == "false"
    # the runs table's duration of the parent run covers the study, not the 16 ms of its creation
    assert (parent.info.end_time - parent.info.start_time) / 1000 >= metrics["elapsed_seconds"] > 0

    reported = make_report([spec], options, Console(quiet=True))
    assert [r.study for r in reported.reports] == ["tiny"] and not reported.several
    tags = _parent(tracking_uri).data.tags
    assert tags["sweeper.confirmed"] == "true" and tags["sweeper.decision"] == reported.reports[0].decision
    assert _parent(tracking_uri).data.metrics["gain"] == pytest.approx(reported.reports[0].gain)


class _Done:
    def lines(self) -> list[str]:
        return ["all done"]


def _raising(exc: BaseException):
    def command():
        raise exc

    return command


@pytest.mark.parametrize(
    ("ending", "code", "said"),
    [
        (lambda: _Done(), 0, "all done"),
        (_raising(UserError("[data] path is 'x'")), 2, "error: [data] path is 'x'"),
        (_raising(TrialsKeepFailing(3, "OSError: disk")), 1, "stopped: 3 trials in a row failed"),
        (_raising(WorkersStopped("workers exited with codes [1]")), 1, "stopped: workers exited"),
        (_raising(Interrupted(15)), 143, "interrupted"),
        (_raising(KeyboardInterrupt()), 130, "interrupted"),
    ],
    ids=["done", "bad input", "failing trials", "dead workers", "SIGTERM", "Ctrl-C"],
)
def test_each_way_a_command_ends_has_its_exit_code_and_one_message(ending, code, said):
    console = Console(record=True, width=200)
    assert exit_code(ending, console) == code
    text = console.export_text()
    assert said in text and "Traceback" not in text


def test_a_password_in_a_message_is_hidden():
    console = Console(record=True, width=200)
    exit_code(_raising(UserError("storage URL 'postgresql://u:hunter2@h/db' is not reachable")), console)
    text = console.export_text()
    assert "hunter2" not in text and "u:***@h" in text


@pytest.mark.slow
def test_a_study_whose_frozen_features_already_separate_the_classes_keeps_feature_extraction(
    workdir, tracking_uri
):
    # numbers against words: MiniLM's frozen features tell them apart perfectly, so nothing is
    # left for the top blocks to add, and fine-tuning cannot clear min_gain
    import csv

    from tests.conftest import vader_rows

    words = [w for w, _ in vader_rows(60)][:120]
    with (workdir / "separable.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([(str(1000 + 7 * i), "number") for i in range(120)] + [(w, "word") for w in words])
    spec = write_spec(
        workdir,
        data={"path": "separable.csv"},
        search={"head_lr": 0.01, "head_epochs": 3},
        budget={"trials": 2, "fe_trials": 2, "confirm_seeds": 2},
    )
    options = Options(tracking_uri=tracking_uri)
    run_study(spec, options, Console(quiet=True))
    report = make_report([spec], options, Console(quiet=True)).reports[0]
    assert report.feature_extraction.value == 1.0  # a linear head already reads every example right
    assert report.decision == "feature_extraction" and report.conclusive is True
    assert report.reason.startswith("rule: fine-tuning cannot reach min_gain 0.01")
    assert report.seeds == 2  # a clear answer stops at the first look


@pytest.mark.slow
def test_study_and_report_state_the_rows_on_missing_drop_left_out(workdir, tracking_uri, tiny_bert):
    spec = write_spec(
        workdir,
        model={"name": str(tiny_bert)},
        data={"on_missing": "drop"},
        budget={"trials": 1, "fe_trials": 1, "confirm_seeds": 2, "max_confirm_seeds": 2},
    )
    with (workdir / "tiny.csv").open("a") as f:
        f.write("lonely,\n,positive\n  ,neutral\n")  # an empty label, two empty texts
    options = Options(tracking_uri=tracking_uri)
    assert run_study(spec, options, Console(quiet=True)).report.dropped_examples == 3
    reported = make_report([spec], options, Console(quiet=True))
    assert reported.reports[0].dropped_examples == 3
    assert json.loads((workdir / "reports" / "tiny" / "report.json").read_text())["dropped_examples"] == 3
