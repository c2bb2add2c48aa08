"""Bad input on the command line: one message, exit code 2, nothing written anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.cli import main
from tests.conftest import write_spec

ARTIFACTS = ("sweeper.db", "mlflow.db", "mlruns", "reports")


def _nothing_written(folder: Path) -> None:
    left = [name for name in ARTIFACTS if (folder / name).exists()]
    assert not left, f"a refused study wrote {left}"


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_bad_spec_exits_2_and_writes_nothing(workdir, capsys):
    spec = write_spec(workdir, search={"unfrozen_blocks": [0, 2], "warmup": 3})
    code, out = _run(["study", str(spec)], capsys)
    assert code == 2
    assert "[search] warmup is not a known key" in out
    assert "Traceback" not in out
    _nothing_written(workdir)


def test_missing_data_path_exits_2_and_writes_nothing(workdir, capsys):
    spec = write_spec(workdir, data={"path": "no-such.csv"})
    code, out = _run(["study", str(spec)], capsys)
    assert code == 2
    assert "[data] path is 'no-such.csv'" in out and "not an existing file" in out
    _nothing_written(workdir)


def test_wrong_text_column_names_the_columns(workdir, capsys):
    spec = write_spec(workdir, data={"text_column": "sentence"})
    code, out = _run(["study", str(spec)], capsys)
    assert code == 2
    assert "[data] text_column is 'sentence'" in out and "'text'" in out
    _nothing_written(workdir)


def test_unknown_transformers_model_exits_2_and_writes_nothing(workdir, capsys):
    spec = write_spec(workdir, model={"name": "no-such-org/no-such-model"})
    code, out = _run(["study", str(spec)], capsys)
    assert code == 2
    assert "[model] name is 'no-such-org/no-such-model'" in out
    _nothing_written(workdir)


def test_unknown_torchvision_model_lists_supported_names(workdir, capsys):
    spec = write_spec(workdir, model={"source": "torchvision", "name": "resnet9000", "weights": "none"})
    code, out = _run(["study", str(spec)], capsys)
    assert code == 2
    assert "[model] name is 'resnet9000'" in out and "resnet50" in out
    _nothing_written(workdir)


def test_too_many_unfrozen_blocks_names_the_model_block_count(workdir, capsys):
    spec = write_spec(workdir, search={"unfrozen_blocks": [0, 7]})
    code, out = _run(["study", str(spec)], capsys)
    assert code == 2
    assert "[search] unfrozen_blocks is [0, 7], but" in out and "has 6 blocks; use 0–6" in out
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


@pytest.mark.parametrize("command", ["study", "report"])
def test_help_describes_each_command(command):
    result = subprocess.run(
        [sys.executable, "-m", "sweeper", command, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0
    assert "--storage" in result.stdout and "--tracking-uri" in result.stdout
    if command == "study":
        assert "--trials" in result.stdout and "--timeout" in result.stdout
    else:
        assert "--out" in result.stdout
