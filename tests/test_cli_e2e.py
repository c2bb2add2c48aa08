"""The commands as a user runs them: study prints the decision and where everything is; report
writes its three files; a second study run continues instead of starting over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_spec

REPO = Path(__file__).resolve().parents[1]


def _sweeper(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "sweeper", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_study_then_report_from_the_command_line(workdir, tracking_uri):
    spec = write_spec(workdir)
    result = _sweeper("study", str(spec), "--trials", "2", "--tracking-uri", tracking_uri, cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "decision:" in out
    assert f"study DB: sqlite:///{workdir / 'sweeper.db'}" in out
    assert f"mlflow ui --backend-store-uri {tracking_uri}" in out
    assert "#/experiments/" in out and "/runs" in out
    assert "epoch 1/" in out and "left" in out  # progress lines

    (workdir / "reports").rename(workdir / "reports-from-study")
    result = _sweeper("report", str(spec), "--tracking-uri", tracking_uri, cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = workdir / "reports" / "tiny"
    assert {"report.html", "report.json", "report.md", "curves.png"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "report.json").read_text())["study"] == "tiny"


def test_report_before_any_study_says_to_run_the_study(workdir):
    spec = write_spec(workdir)
    result = _sweeper("report", str(spec), cwd=workdir)
    assert result.returncode == 2
    assert "no study 'tiny'" in result.stdout and "python -m sweeper study" in result.stdout


@pytest.mark.slow
def test_the_default_study_runs_offline_and_decides(tmp_path):
    # the README's promise: `python -m sweeper study` with no argument, from the repository root
    result = _sweeper(
        "study",
        "--storage",
        f"sqlite:///{tmp_path / 'sweeper.db'}",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--out",
        str(tmp_path / "report"),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["feature_extraction"]["value"] > 0.7  # DESIGN.md: about 0.82 with a linear head
