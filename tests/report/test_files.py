"""The report's files: report.json with its fixed schema, report.md and a self-contained
report.html with the plots embedded; several studies give one table and a JSON list."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from sweeper.errors import UserError
from sweeper.report import REPORT_KEYS, build_report, write_report, write_summary
from sweeper.report.files import ReportNotWritten, check_report_folder
from sweeper.spec import load_spec
from tests.conftest import tmpfs, write_spec
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


def _study_with_plots():
    return make_study("maximize", [(0, 0.8, 2.0), (0, 0.78, 2.5), (2, 0.9, 10.0), (1, 0.86, 6.0)])


def _contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_full_disk_leaves_the_earlier_report_as_it_was_and_nothing_half_written(spec, tmp_path):
    study = _study_with_plots()
    report = build_report(study, spec, DATASET, None, PROBE, LABELS)
    # a real 256 KiB filesystem: the report without plots fits (about 10 KB), with them not (300 KB)
    with tmpfs(tmp_path / "disk", size="256k") as disk:
        write_report(report, disk / "tiny")
        before = _contents(disk / "tiny")
        with pytest.raises(
            ReportNotWritten, match=r"report folder .*tiny: No space left on device \(ENOSPC\)"
        ):
            write_report(report, disk / "tiny", study)
        assert _contents(disk / "tiny") == before
        assert [p.name for p in disk.iterdir()] == ["tiny"]  # no temporary folder or file left

        with pytest.raises(ReportNotWritten):  # a new folder: not created at all, nor its parents
            write_report(report, disk / "new" / "tiny", study)
        assert [p.name for p in disk.iterdir()] == ["tiny"]


def test_a_report_folder_is_replaced_whole_not_mixed_with_the_earlier_one(spec, tmp_path):
    study = _study_with_plots()
    report = build_report(study, spec, DATASET, None, PROBE, LABELS)
    write_report(report, tmp_path / "tiny", study)
    assert (tmp_path / "tiny" / "curves.png").is_file()
    write_report(report, tmp_path / "tiny")  # no study: no plots
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "report.html",
        "report.json",
        "report.md",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", "tiny.csv", "tiny.toml"]


def test_the_summary_s_files_are_not_left_half_written_on_a_full_disk(spec, tmp_path):
    one = build_report(make_study("maximize", [(0, 0.8, 2.0), (2, 0.9, 10.0)]), spec, DATASET, None, PROBE)
    with tmpfs(tmp_path / "disk", size="4k") as disk:
        with pytest.raises(ReportNotWritten):
            write_summary([one] * 20, disk, ["tiny/report.html"] * 20)
        assert list(disk.iterdir()) == []


def _refused(out, said: str, summary: bool = False) -> None:
    with pytest.raises(UserError, match=said):
        check_report_folder(out, summary)


def test_out_naming_a_file_or_a_path_under_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    _refused(tmp_path / "notes.txt", "is an existing file")
    _refused(tmp_path / "notes.txt" / "tiny", "notes.txt is a file, not a folder")
    _refused(tmp_path / "notes.txt" / "a" / "b", "notes.txt is a file, not a folder")


def test_out_holding_files_sweeper_did_not_write_is_refused_and_they_stay(tmp_path):
    out = tmp_path / "tiny"
    out.mkdir()
    for name in ("report.json", "curves.png", "notes.txt", "data.csv"):
        (out / name).write_text("x")
    _refused(out, r"holds files sweeper did not write \(data.csv, notes.txt\)")
    (out / "sub").mkdir()
    (out / "notes.txt").unlink()
    (out / "data.csv").unlink()
    _refused(out, r"\(sub\)")  # a report folder holds no folders; a summary folder holds reports
    _refused(out, r"\(curves.png\)", summary=True)  # a summary folder holds no plots
    (out / "curves.png").unlink()
    check_report_folder(out, summary=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "sub"]


def test_out_may_be_new_empty_or_an_earlier_report_folder(spec, tmp_path):
    check_report_folder(tmp_path / "new" / "deeper")
    (tmp_path / "empty").mkdir()
    check_report_folder(tmp_path / "empty")
    report = build_report(_study_with_plots(), spec, DATASET, None, PROBE, LABELS)
    write_report(report, tmp_path / "earlier", _study_with_plots())
    check_report_folder(tmp_path / "earlier")


def test_out_on_a_read_only_filesystem_is_refused_before_any_work(tmp_path):
    with tmpfs(tmp_path / "ro", readonly=True) as disk:
        _refused(disk / "tiny", "is not writable")
