"""The report's files: report.json with its fixed schema, report.md and a self-contained
report.html with the plots embedded; several studies give one table and a JSON list."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from sweeper.report import REPORT_KEYS, build_report, write_report, write_summary
from sweeper.spec import load_spec
from tests.conftest import write_spec
from tests.report.studies import DATASET, LABELS, PROBE, make_runs, make_study


@pytest.fixture
def spec(tmp_path):
    return load_spec(write_spec(tmp_path, decision={"min_gain": 0.01}))


def test_report_files_hold_the_fixed_schema_and_embed_the_plots(spec, tmp_path):
    study = make_study("maximize", [(0, 0.8, 2.0), (0, 0.78, 2.5), (2, 0.9, 10.0), (1, 0.86, 6.0)])
    confirmation = {
        "feature_extraction": make_runs([0.8, 0.81], 2.0, 0),
        "fine_tuning": make_runs([0.9, 0.91], 9.0, 1),
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
    one = build_report(make_study("maximize", [(0, 0.8, 2.0), (2, 0.9, 10.0)]), spec, DATASET, None, PROBE)
    two = dataclasses.replace(one, study="other", decision="feature_extraction")
    write_summary([one, two], tmp_path, ["tiny/report.html", "other/report.html"])
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert [r["study"] for r in loaded] == ["tiny", "other"]
    table = (tmp_path / "report.md").read_text()
    assert "| [tiny](tiny/report.html) | fine tuning |" in table and "small / similar" in table
