"""The renderers read the typed report only: the headline says the decision, its reason, the gain
with its interval and the cost; a search-only report says so; the HTML escapes what it shows."""

from __future__ import annotations

import dataclasses

import pytest

from sweeper.report import build_report
from sweeper.report.render import arm_rows, headline, render_html, render_markdown
from sweeper.report.summary import render_summary_text
from sweeper.spec import load_spec
from tests.conftest import write_spec
from tests.report.studies import DATASET, PROBE, confirmed_report, make_study


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path, decision={"min_gain": 0.01}))


def test_the_headline_gives_the_decision_its_reason_gain_interval_and_cost(spec):
    report = confirmed_report(spec, [0.80, 0.805, 0.795], [0.90, 0.905, 0.895])
    rows = dict(headline(report))
    assert rows["decision"] == "fine tuning" and rows["reason"] == report.reason
    gain = rows["gain of fine-tuning (test_accuracy)"]
    assert gain.startswith("+0.1000, 95% interval [+") and gain.endswith("min_gain 0.01")
    assert rows["cost ratio (fine-tuning / feature extraction, device-seconds per run)"] == "20.0x"
    labels = [label for label, _, _ in arm_rows(report)]
    assert "test_accuracy per seed" in labels and "  of which frozen-prefix states" in labels


def test_a_search_only_report_shows_the_search_s_figures_alone(spec):
    report = build_report(
        make_study("maximize", [(0, 0.80, 2.0), (3, 0.90, 20.0)]), spec, DATASET, None, PROBE
    )
    labels = [label for label, _, _ in arm_rows(report)]
    assert "device-seconds (best trial)" in labels and "test_accuracy per seed" not in labels
    assert "search only" in render_markdown(report)


def test_the_html_page_escapes_what_it_shows_and_the_text_table_lists_each_study(spec):
    report = dataclasses.replace(confirmed_report(spec, [0.8] * 3, [0.9] * 3), reason="<script>x</script>")
    page = render_html(report, [])
    assert "<script>x" not in page and "&lt;script&gt;x" in page
    table = render_summary_text([report, dataclasses.replace(report, study="other")])
    assert table.splitlines()[0].split()[:2] == ["study", "decision"] and len(table.splitlines()) == 3


def test_a_report_over_data_with_dropped_examples_says_so_in_one_line(spec):
    report = confirmed_report(spec, [0.8] * 3, [0.9] * 3)
    assert "left out" not in render_markdown(report) and "left out" not in render_html(report, [])
    dropped = dataclasses.replace(report, dropped_examples=3)
    line = '3 examples of the data left out under [data] on_missing = "drop"'
    assert sum(line in row for row in render_markdown(dropped).splitlines()) == 1
    assert line.replace('"', "&quot;") in render_html(dropped, [])
