"""Several worker processes share one study through a real study DB (PostgreSQL and SQLite): the
study ends with exactly its total of finished trials, each once with its MLflow run, even when a
worker is killed mid-trial; SIGTERM stops workers cleanly; a worker's exit says why."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeper import workers as workers_module
from sweeper.study import FINISHED
from sweeper.workers import WorkerProcess, default_worker_count, exit_reasons
from tests.conftest import write_spec

REPO = Path(__file__).resolve().parents[1]
RUN_STATUS_OF_STATE = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.FAIL: "FAILED",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def storage_url(request, workdir) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{workdir / 'sweeper.db'}"
    return request.getfixturevalue("postgres_url")


def _spec(workdir: Path, tiny_bert: Path, trials: int, **search) -> Path:
    return write_spec(workdir, model={"name": str(tiny_bert)}, budget={"trials": trials}, search=search)


def _env(workdir: Path, storage: str, tracking: str, grace: int = 4) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # several workers share 2 cores
        "SWEEPER_STORAGE": storage,
        "MLFLOW_TRACKING_URI": tracking,
        "SWEEPER_CACHE_DIR": str(workdir / "cache"),
        # a dead worker's trial is failed after 4 s without heartbeats (users: 30 s / 120 s)
        "SWEEPER_HEARTBEAT_INTERVAL": "1",
        "SWEEPER_HEARTBEAT_GRACE": str(grace),
    }


def _sweeper(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def _load(storage: str, name: str = "tiny", wait: float = 600) -> optuna.Study:
    # generous: twelve workers importing torch on two busy cores took over 120 s to create the study.
    # No pool: each poll's storage would keep its connection open until garbage collected, and a
    # few hundred polls while the workers start exhaust the server's max_connections
    # ("too many clients"), failing the workers under test
    rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})
    deadline = time.monotonic() + wait
    while True:
        try:
            return optuna.load_study(study_name=name, storage=rdb)
        except KeyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _assert_ends_exact(study: optuna.Study, tracking: str, total: int) -> None:
    trials = study.get_trials()
    # exactly the total, nothing left running, each trial once
    assert sum(t.state in FINISHED for t in trials) == total
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    # the baselines ran once each
    for strategy in ("feature_extraction", "fine_tuning"):
        ran = [t for t in trials if t.state in FINISHED and t.user_attrs.get("sweeper.baseline") == strategy]
        assert len(ran) == 1, f"the {strategy} baseline finished {len(ran)} times"
    # each trial has its own MLflow run, ended with the trial's state; no run is left RUNNING
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([experiment], "tags.`optuna.trial` != ''")}
    started = [t for t in trials if t.state != TrialState.WAITING]
    assert sorted(r.data.tags["optuna.trial"] for r in runs.values()) == sorted(
        str(t.number) for t in started
    )
    for trial in started:
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna.trial"] == str(trial.number)
        assert run.info.status == RUN_STATUS_OF_STATE[trial.state], trial.number
    parents = client.search_runs([experiment], "tags.`sweeper.role` = 'study'")
    assert len(parents) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "command"),
    # on one machine: `study --workers 4` with the SQLite default, then the report;
    # across machines: `worker` processes on PostgreSQL
    [("sqlite", "study"), ("postgresql", "worker")],
)
def test_four_workers_run_one_study_to_exactly_its_total(
    workdir, tracking_uri, tiny_bert, request, backend, command
):
    storage = (
        request.getfixturevalue("postgres_url")
        if backend == "postgresql"
        else f"sqlite:///{workdir / 'sweeper.db'}"
    )
    spec = _spec(workdir, tiny_bert, trials=8)
    # trust auth ignores the password: it only has to stay out of every output and record
    shown_storage = storage.replace("postgres@", "postgres:hunter2@")
    env = _env(workdir, shown_storage, tracking_uri)
    code, out = _finish(_sweeper(command, str(spec), "--workers", "4", env=env, cwd=workdir))
    assert code == 0, out[-3000:]
    assert "4 workers" in out
    assert "decision:" in out if command == "study" else "holds 8/8 finished trials" in out

    study = _load(storage)
    _assert_ends_exact(study, tracking_uri, total=8)
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2  # they shared the work
    assert "hunter2" not in out
    client = MlflowClient(tracking_uri)
    for run in client.search_runs([client.get_experiment_by_name("tiny").experiment_id]):
        assert "hunter2" not in str(run.data.params) + str(run.data.tags)


def _kill_one_mid_trial(study: optuna.Study, workers: list[subprocess.Popen]) -> tuple[int, int]:
    """SIGKILL a worker while it runs a trial (whose MLflow run has started); returns the worker's
    index and the trial number. SIGSTOP first, so that the trial cannot end between look and kill,
    then a moment for a write already sent (a COMPLETE on its way through the proxy or the server)
    to land before the state is read: without it the trial was now and then seen RUNNING, killed,
    and completed a moment later by its in-flight request."""
    by_id = {f"{socket.gethostname()}:{w.pid}": i for i, w in enumerate(workers)}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            index = by_id.get(trial.user_attrs.get("worker", ""))
            if index is None or "mlflow_run_id" not in trial.user_attrs:
                continue
            workers[index].send_signal(signal.SIGSTOP)
            time.sleep(0.5)
            if study.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING:
                workers[index].kill()
                workers[index].wait()
                return index, trial.number
            workers[index].send_signal(signal.SIGCONT)
        if all(worker.poll() is not None for worker in workers):
            raise AssertionError("the workers ended the study before one was seen mid-trial")
        time.sleep(0.05)
    raise AssertionError("no worker was ever seen mid-trial")


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_replaced_and_the_study_still_ends_exact(
    workdir, tracking_uri, storage_url, tiny_bert
):
    # trials of 400+ epochs: long enough to be caught running with their MLflow run id on the
    # trial (it lands when the writer process has created the run; with 10 or 40 epochs, on a
    # quiet machine with a warm cache, two workers ended all 6 trials within a second or two,
    # the ids landing late, and no trial was seen running with its id)
    spec = _spec(workdir, tiny_bert, trials=6, head_epochs=400, stage_epochs=3)
    env = _env(workdir, storage_url, tracking_uri)
    workers = [_sweeper("worker", str(spec), "--workers", "1", env=env, cwd=workdir) for _ in range(2)]
    try:
        victim, number = _kill_one_mid_trial(_load(storage_url), workers)
        for index, worker in enumerate(workers):
            if index != victim:
                code, out = _finish(worker)
                assert code == 0, out[-3000:]
    finally:
        for worker in workers:
            worker.kill()

    study = _load(storage_url)
    killed = study.trials[number]
    assert killed.state == TrialState.FAIL
    # another worker ran its parameters again
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
    assert [t.state in FINISHED for t in retries] == [True]
    assert retries[0].params == killed.params
    assert retries[0].user_attrs["worker"] != killed.user_attrs["worker"]
    _assert_ends_exact(study, tracking_uri, total=6)
    run = MlflowClient(tracking_uri).get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "heartbeats" in run.data.tags["sweeper.reason"]


@pytest.mark.slow
def test_sigterm_stops_the_study_and_its_workers_cleanly(workdir, tracking_uri, tiny_bert):
    storage = f"sqlite:///{workdir / 'sweeper.db'}"
    spec = _spec(workdir, tiny_bert, trials=50, head_epochs=3)
    # the frozen worker must not be taken for dead meanwhile: this test is about SIGTERM, and on a
    # loaded machine SIGSTOP to SIGCONT can outlast a short grace
    env = _env(workdir, storage, tracking_uri, grace=60)
    parent = _sweeper("study", str(spec), "--workers", "2", env=env, cwd=workdir)
    try:
        worker_pid, number = _freeze_a_worker_mid_trial(_load(storage), parent)
        # as from Ctrl-C in a terminal: the signal reaches the workers and the parent
        os.kill(worker_pid, signal.SIGTERM)
        parent.send_signal(signal.SIGTERM)
        os.kill(worker_pid, signal.SIGCONT)
        code, out = _finish(parent, timeout=120)
    finally:
        parent.kill()
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "interrupted" in out

    trials = _load(storage).trials
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert trials[number].state == TrialState.FAIL
    assert "Interrupted: SIGTERM" in trials[number].user_attrs["fail_reason"]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    # the other worker may have been stopped between trials, or mid-trial: its runs ended too
    for trial in trials:
        if trial.state == TrialState.FAIL and "mlflow_run_id" in trial.user_attrs:
            run = client.get_run(trial.user_attrs["mlflow_run_id"])
            assert run.info.status == "FAILED" and "SIGTERM" in run.data.tags["sweeper.reason"]


def _freeze_a_worker_mid_trial(study: optuna.Study, parent: subprocess.Popen) -> tuple[int, int]:
    """SIGSTOP a worker of ``parent`` while it trains (between its first and last epoch of at
    least 3); returns its pid and the trial number."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and parent.poll() is None:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if len(trial.intermediate_values) not in (1, 2):
                continue
            pid = int(trial.user_attrs["worker"].rpartition(":")[2])
            os.kill(pid, signal.SIGSTOP)
            if study.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING:
                return pid, trial.number
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("no worker was ever seen mid-trial")


class _Exited:
    """A process that has exited with this code (negative: killed by that signal)."""

    def __init__(self, pid: int, exitcode: int | None) -> None:
        self.pid, self.exitcode = pid, exitcode


def test_a_worker_s_exit_says_why_and_a_clean_exit_says_nothing():
    workers = [
        WorkerProcess(_Exited(pid, code), None) for pid, code in ((11, 0), (12, -9), (13, 1), (14, None))
    ]
    reasons = exit_reasons(workers)
    host = socket.gethostname()
    assert reasons == {
        f"{host}:12": "worker process 12 was killed by signal 9",
        f"{host}:13": "worker process 13 exited with code 1",
    }


def test_one_worker_per_visible_gpu_and_one_on_the_cpu(monkeypatch):
    monkeypatch.setattr(workers_module, "visible_gpus", lambda: ["0", "1"])
    assert [default_worker_count(device) for device in ("auto", "cuda", "cuda:1", "cpu")] == [2, 2, 2, 1]
    monkeypatch.setattr(workers_module, "visible_gpus", lambda: [])
    assert default_worker_count("auto") == 1


def _digits_spec(workdir: Path, trials: int) -> Path:
    """An image study: sklearn's digits 0 and 1 as an ImageFolder of 8x8 PNGs, resnet18 with
    random weights at 16x16: with the cache off, each batch is decoded by DataLoader workers."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in (0, 1):
        folder = workdir / "digits" / str(label)
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:40]):
            Image.fromarray((image * 15).astype("uint8")).save(folder / f"{i}.png")
    return write_spec(
        workdir,
        name="digits",
        model={"source": "torchvision", "name": "resnet18", "weights": "none", "max_length": None},
        data={"kind": "imagefolder", "path": "digits", "image_size": 16},
        budget={"trials": trials},
        search={"unfrozen_blocks": [0, 2], "head_epochs": 3, "stage_epochs": 2},
        train={"batch_size": 8},
    )


def _marked_env(workdir: Path, tracking_uri: str) -> tuple[dict[str, str], str]:
    """The environment of a study whose processes can be found by a marker in theirs."""
    value = uuid.uuid4().hex
    env = {**_env(workdir, f"sqlite:///{workdir / 'sweeper.db'}", tracking_uri), "SWEEPER_TEST_TREE": value}
    return env, f"SWEEPER_TEST_TREE={value}"


def _marked(marker: str) -> dict[int, tuple[int, str]]:
    """``{pid: (parent pid, command line)}`` of the live processes whose environment holds the
    marker: every process a study started with it, however far down the tree."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state, parent = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # exited meanwhile, or a zombie's environ
            continue
        if state not in ("Z", "X"):  # a zombie is dead, waiting for its new parent to reap it
            found[int(entry.name)] = (int(parent), command)
    return found


def _wait_until_none_marked(
    marker: str, seconds: float, among: list[int] | None = None
) -> dict[int, tuple[int, str]]:
    """The marked processes (of ``among``, if given) still alive after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        left = {pid: p for pid, p in _marked(marker).items() if among is None or pid in among}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _a_worker_with_helpers(marker: str, study: subprocess.Popen) -> int:
    """The pid of a ``--workers`` process of ``study`` while DataLoader worker processes of its
    own run (forked, so with their parent's command line; wherever they sit below it)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and study.poll() is None:
        tree = _marked(marker)
        forkservers = {pid for pid, (parent, _) in tree.items() if parent == study.pid}
        for worker in (pid for pid, (parent, _) in tree.items() if parent in forkservers):
            below = _descendants(tree, worker)
            if any(tree[pid][1] == tree[tree[pid][0]][1] for pid in below):
                return worker
        time.sleep(0.05)
    raise AssertionError("no worker was ever seen with DataLoader workers")


def _descendants(tree: dict[int, tuple[int, str]], root: int) -> list[int]:
    found, parents = [], {root}
    while children := [pid for pid, (parent, _) in tree.items() if parent in parents]:
        found += children
        parents = set(children)
    return found


def _kill_marked(marker: str) -> None:
    for pid in _marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_a_sigkilled_image_worker_leaves_no_process_behind_once_the_study_exits(workdir, tracking_uri):
    env, marker = _marked_env(workdir, tracking_uri)
    spec = _digits_spec(workdir, trials=4)
    log = workdir / "study.log"  # not a pipe: a process left behind would hold it open
    with log.open("w") as out:
        study = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "study", str(spec), "--workers", "3", "--no-cache"],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        worker = _a_worker_with_helpers(marker, study)
        helpers = _descendants(_marked(marker), worker)
        os.kill(worker, signal.SIGKILL)
        # its DataLoader workers at once, its MLflow writer once it has made the writes sent
        left = _wait_until_none_marked(marker, 10, among=helpers)
        assert not left, f"alive after their worker was killed: {left}"
        assert study.wait(timeout=300) == 0, log.read_text()[-3000:]
        assert "4/4 finished trials" in log.read_text()
        # its DataLoader workers, its MLflow writer, the forkserver, the resource tracker: all gone
        left = _wait_until_none_marked(marker, 10)
        assert not left, f"alive after the study exited: {left}"
    finally:
        study.kill()
        _kill_marked(marker)


@pytest.mark.slow
def test_a_sigkilled_study_takes_its_workers_and_their_helpers_with_it(workdir, tracking_uri):
    env, marker = _marked_env(workdir, tracking_uri)
    spec = _digits_spec(workdir, trials=40)
    study = _sweeper("study", str(spec), "--workers", "2", "--no-cache", env=env, cwd=workdir)
    try:
        _a_worker_with_helpers(marker, study)
        study.kill()
        study.wait()
        # the workers stop as from SIGTERM (their trials marked failed), their helpers at once
        left = _wait_until_none_marked(marker, 30)
        assert not left, f"alive after the study was killed: {left}"
    finally:
        study.kill()
        _kill_marked(marker)
