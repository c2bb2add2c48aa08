"""The command line as a user meets it: bad input gets one message, exit code 2 and nothing
written anywhere; --help describes each command; every command takes the default spec; study
prints the decision and where everything is; report writes its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.cli import main
from tests.conftest import write_spec

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = ("sweeper.db", "mlflow.db", "mlruns", "reports")


def _nothing_written(folder: Path) -> None:
    left = [name for name in ARTIFACTS if (folder / name).exists()]
    assert not left, f"a refused study wrote {left}"


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


# (what is wrong in the spec, what the one message must say)
BAD_SPECS = {
    "unknown key": (
        {"search": {"unfrozen_blocks": [0, 2], "warmup": 3}},
        ["[search] warmup is not a known key"],
    ),
    "missing data file": (
        {"data": {"path": "no-such.csv"}},
        ["[data] path is 'no-such.csv'", "not an existing file"],
    ),
    "wrong text column": (
        {"data": {"text_column": "sentence"}},
        ["[data] text_column is 'sentence'", "'text'"],
    ),
    "unknown data kind": ({"data": {"kind": "parquet"}}, ["[data] kind is 'parquet'", "vader_lexicon"]),
    "unknown transformers model": (
        {"model": {"name": "no-such-org/no-such-model"}},
        ["[model] name is 'no-such-org/no-such-model'"],
    ),
    "unknown torchvision model": (
        {"model": {"source": "torchvision", "name": "resnet9000", "weights": "none"}},
        ["[model] name is 'resnet9000'", "resnet50"],
    ),
    "more blocks than the model has": (
        {"search": {"unfrozen_blocks": [0, 7]}},
        ["[search] unfrozen_blocks is [0, 7], but", "has 6 blocks; use 0–6"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_bad_spec_gets_one_message_exit_code_2_and_writes_nothing(case, workdir, capsys):
    sections, said = BAD_SPECS[case]
    code, out = _run(["study", str(write_spec(workdir, **sections))], capsys)
    assert code == 2
    assert all(part in out for part in said), out
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 2  # the data line, the error
    _nothing_written(workdir)


def test_unreachable_storage_exits_2_hides_password_and_writes_nothing(workdir, capsys):
    spec = write_spec(workdir)
    url = "postgresql+psycopg://sweeper:hunter2@127.0.0.1:1/optuna"
    code, out = _run(["study", str(spec), "--storage", url], capsys)
    assert code == 2
    assert "is not reachable" in out
    assert "hunter2" not in out and "sweeper:***@127.0.0.1:1" in out
    _nothing_written(workdir)


def test_storage_url_that_is_not_a_url_is_refused(workdir, capsys):
    spec = write_spec(workdir)
    code, out = _run(["study", str(spec), "--storage", "my-db"], capsys)
    assert code == 2 and "is not a database URL" in out
    _nothing_written(workdir)


@pytest.mark.parametrize("command", ["study", "worker", "report"])
def test_help_describes_each_command(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the wrapping
    assert done.value.code == 0
    assert "--storage" in out and "--tracking-uri" in out and "default: studies/vader-minilm.toml" in out
    if command in ("study", "worker"):
        assert "--trials" in out and "--timeout" in out and "--workers" in out and "--device" in out
    else:
        assert "--out" in out


@pytest.mark.parametrize("command", ["study", "worker", "report"])
def test_every_command_takes_the_default_spec(command, workdir, capsys):
    # the default study's data is loaded (or its study looked up) before the bad storage URL stops it
    code, out = _run([command, "--storage", "my-db"], capsys)
    assert code == 2 and "is not a database URL" in out
    if command != "report":
        assert "data: the VADER lexicon" in out
    _nothing_written(workdir)


@pytest.mark.slow
def test_help_answers_without_loading_the_heavy_libraries():
    code = "import sys; from sweeper.cli import main\ntry: main(['study', '--help'])\nexcept SystemExit: pass\nprint(sorted(m for m in ('torch', 'mlflow', 'optuna', 'transformers') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_before_any_study_says_to_run_the_study(workdir):
    spec = write_spec(workdir)
    result = _sweeper("report", str(spec), cwd=workdir)
    assert result.returncode == 2
    assert "no study 'tiny'" in result.stdout and "python -m sweeper study" in result.stdout


@pytest.mark.slow
def test_the_default_study_runs_offline_and_decides(tmp_path):
    # the README's promise: `python -m sweeper study` with no spec, from the repository root: the
    # default spec, data and model, offline, both arms, to a decision. Its full budget (24
    # feature-extraction trials and 12 fine-tuning trials, over ten minutes on 2 cores) is timed in
    # BENCHMARKS.md; here all 24 feature-extraction trials and 2 fine-tuning trials run.
    result = _sweeper(
        "study",
        "--trials",
        "2",
        "--storage",
        f"sqlite:///{tmp_path / 'sweeper.db'}",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--out",
        str(tmp_path / "report"),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "decision:" in result.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["feature_extraction"]["value"] > 0.7  # DESIGN.md: about 0.82 with a linear head
    assert report["fine_tuning"]["value"] is not None


@pytest.mark.slow
def test_the_cli_caches_in_cache_dir_and_not_with_no_cache(workdir, tracking_uri, monkeypatch):
    spec = write_spec(workdir)
    storage = f"sqlite:///{workdir / 'sweeper.db'}"
    common = ["--storage", storage, "--tracking-uri", tracking_uri]
    assert main(["study", str(spec), "--trials", "1", *common, "--cache-dir", str(workdir / "here")]) == 0
    assert list((workdir / "here").glob("*/*.safetensors"))

    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(workdir / "default"))
    assert main(["study", str(spec), "--trials", "2", *common, "--no-cache"]) == 0
    assert not list((workdir / "default").glob("*/*.safetensors"))


# (a bad data file as users meet it, what the one message must say)
BAD_DATA = {
    "latin-1": ("text,label\ngood,pos\ncafé,neg\n".encode("latin-1"), ["line 3", "expected UTF-8", "iconv"]),
    "empty label": (
        b"text,label\ngood,pos\nbad,\n",
        ["column 'label' is empty in 1 row (row 3)", "on_missing"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_a_bad_csv_ends_the_study_with_one_line_exit_code_2_and_nothing_written(case, workdir):
    content, said = BAD_DATA[case]
    spec = write_spec(workdir)
    (workdir / "tiny.csv").write_bytes(content)
    result = _sweeper("study", str(spec), cwd=workdir)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-2000:]
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert str(workdir / "tiny.csv") in out and all(part in out for part in said), out
    _nothing_written(workdir)
