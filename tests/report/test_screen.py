"""The report of a study a candidate screen kept opens with the screen: the ranking with the probe,
LogME and seconds of each candidate, the seconds of the whole screen, and what a full study of each
costs (this study's, measured; the others', an estimate scaled by their feature seconds). A study
without a screen reports as before."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sweeper.records import StudyAttr
from sweeper.report import build_report
from sweeper.report.render import render_html, render_markdown
from sweeper.report.screen import screen_of, screen_rows
from sweeper.spec import load_spec
from tests.conftest import write_spec
from tests.report.studies import DATASET, PROBE, confirmed_report, make_study

MINILM_STUDY, RANDOM_STUDY, OTHER_STUDY = "tiny-minilm", "tiny-minilm-random", "tiny-other"


def _row(candidate, study, pretrained, probe, logme, feature_seconds, kept=False, from_cache=False):
    return {
        "candidate": candidate,
        "study": study,
        "pretrained": pretrained,
        "probe": probe,
        "logme": logme,
        "seconds": feature_seconds + 1.5,
        "feature_seconds": feature_seconds,
        "from_cache": from_cache,
        "feature_dim": 384,
        "kept": kept,
    }


# as `screen.ScreenResult.to_json` records it on the kept study
RECORDED = {
    "ranking": [
        _row("minilm", MINILM_STUDY, True, 0.67, -0.32, 20.0, kept=True),
        _row("minilm (weights none)", RANDOM_STUDY, False, 0.42, -0.56, 10.0),
        _row("other", OTHER_STUDY, True, 0.40, -0.30, 5.0, from_cache=True),
    ],
    "keep": 1,
    "seconds": 52.5,
    "num_classes": 3,
    "logme_agrees": False,
}


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path))


def test_this_study_s_cost_is_measured_and_the_others_are_scaled_by_their_feature_seconds():
    screen = screen_of(RECORDED, MINILM_STUDY, search_seconds=400.0)
    minilm, random, other = screen.rows
    assert (minilm.study_seconds, minilm.study_basis) == (400.0, "measured")
    # half the feature seconds of the kept one: half its study, as an estimate
    assert (random.study_seconds, random.study_basis) == (200.0, "estimate")
    # features read from the cache took no computing time to scale: no estimate
    assert (other.study_seconds, other.study_basis) == (None, None)


def test_no_estimate_is_made_from_a_kept_study_whose_features_came_from_the_cache():
    recorded = json.loads(json.dumps(RECORDED))
    recorded["ranking"][0]["from_cache"] = True
    rows = screen_of(recorded, MINILM_STUDY, 400.0).rows
    assert rows[0].study_basis == "measured" and [r.study_seconds for r in rows[1:]] == [None, None]


def test_the_table_gives_rank_pretraining_probe_logme_seconds_and_the_cost_labelled(spec):
    rows = screen_rows(screen_of(RECORDED, MINILM_STUDY, 400.0))
    assert rows[0] == (
        "1",
        "minilm (this study)",
        "yes",
        "0.6700",
        "-0.3200",
        "21.5 (features 20.0)",
        "400 (measured)",
    )
    assert rows[1][2] == "no (random weights)" and rows[1][-1] == "200 (estimate)"
    assert rows[2][5] == "6.5 (features 5.0, from the cache)" and rows[2][-1] == "–"


def test_the_report_opens_with_the_screen_in_markdown_html_and_json(spec):
    report = dataclasses.replace(
        confirmed_report(spec, [0.8] * 3, [0.9] * 3), screen=screen_of(RECORDED, MINILM_STUDY, 400.0)
    )
    markdown = render_markdown(report)
    assert markdown.splitlines()[2] == "## Choosing the backbone: the candidate screen"
    assert markdown.index("minilm (this study)") < markdown.index("**decision**")
    assert "The screen took 52.5 s for 3 candidates" in markdown
    assert "LogME ranks them in another order (the probe decides)" in markdown
    page = render_html(report, [])
    assert page.index("<table id='screen'>") < page.index("class='decision'")
    data = report.to_json()
    assert next(iter(data)) == "screen" and data["screen"]["ranking"][0]["study_basis"] == "measured"
    assert data["screen"]["seconds"] == 52.5 and json.loads(json.dumps(data["screen"])) == data["screen"]


def test_a_report_of_a_study_without_a_screen_is_as_before(spec):
    report = confirmed_report(spec, [0.8] * 3, [0.9] * 3)
    assert report.screen is None and "screen" not in report.to_json()
    assert "candidate screen" not in render_markdown(report) and "id='screen'" not in render_html(report, [])


def test_the_built_report_reads_the_screen_the_study_recorded_and_its_search_seconds(spec):
    study = make_study("maximize", [(0, 0.80, 2.0), (2, 0.85, 20.0)])
    study.set_user_attr(StudyAttr.SCREEN, RECORDED)
    screened = spec.model_copy(update={"study": spec.study.model_copy(update={"name": MINILM_STUDY})})
    report = build_report(study, screened, DATASET, None, PROBE)
    assert report.screen.rows[0].study_seconds == report.cost.study.device_seconds == 22.0
    assert report.screen.rows[1].study_seconds == 11.0
