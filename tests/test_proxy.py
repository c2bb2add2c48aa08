"""The storage proxy (`python -m sweeper storage-proxy`) on a real SQLite file and the local
PostgreSQL: workers behind it share the study lock with workers on the DB directly, their
heartbeats reach the DB, a worker SIGKILLed behind it has its trial failed, retried and its MLflow
run failed, and a proxy that does not answer is refused in seconds."""

from __future__ import annotations

import datetime
import signal
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeper.errors import UserError
from sweeper.proxy import make_proxy_server
from sweeper.proxy_client import connect_proxy, parse_proxy_url
from sweeper.reachable import study_exists
from sweeper.storage import StudyLock, make_storage
from sweeper.study import FINISHED
from tests.test_workers import REPO, _assert_ends_exact, _env, _finish, _kill_one_mid_trial, _load, _spec


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweeper.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def proxy(db_url):
    """A proxy over ``db_url`` in this process; yields its grpc:// address."""
    port = _free_port()
    server = make_proxy_server(db_url, "127.0.0.1", port, pool_size=2)
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


def test_the_study_lock_through_the_proxy_excludes_other_proxy_workers_and_direct_workers(proxy, db_url):
    one, two = connect_proxy(proxy, 1, 2), connect_proxy(proxy, 1, 2)
    direct = make_storage(db_url)
    first = StudyLock(one, "s")
    assert first.acquire()
    assert not StudyLock(two, "s").acquire(wait=False)
    assert not StudyLock(direct, "s").acquire(wait=False)  # the proxy holds the DB's own lock
    assert StudyLock(two, "s", scope="report").acquire(wait=False)  # another scope, another lock
    first.release()  # the proxy releases it as the stream ends, a moment later: wait for it
    second = StudyLock(two, "s")
    assert second.acquire()
    second.release()
    direct_lock = StudyLock(direct, "s")
    assert direct_lock.acquire()
    assert not StudyLock(one, "s").acquire(wait=False)  # and a direct worker's lock holds for it
    direct_lock.release()


def test_a_waiting_worker_gets_the_lock_once_the_holder_releases_it(proxy):
    holder, waiter = StudyLock(connect_proxy(proxy, 1, 2), "s"), StudyLock(connect_proxy(proxy, 1, 2), "s")
    holder.acquire()
    got = threading.Event()
    thread = threading.Thread(target=lambda: waiter.acquire() and got.set())
    thread.start()
    assert not got.wait(0.5)
    holder.release()
    thread.join(30)
    assert got.is_set()
    waiter.release()


def test_a_trial_behind_the_proxy_whose_heartbeats_stopped_is_failed_and_its_callback_runs(proxy, db_url):
    stale: list[int] = []
    storage = connect_proxy(proxy, 1, 2, on_stale=lambda study, trial: stale.append(trial.number))
    study = optuna.create_study(study_name="s", storage=storage)
    silent, alive = study.ask(), study.ask()
    storage.record_heartbeat(silent._trial_id)
    storage.record_heartbeat(alive._trial_id)
    # the silent trial's last heartbeat, an hour ago in the DB's clock
    engine = sqlalchemy.create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = heartbeat - :hour WHERE trial_id = :id")
            if engine.dialect.name == "postgresql"
            else sqlalchemy.text(
                "UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00' WHERE trial_id = :id"
            ),
            {"id": silent._trial_id, "hour": datetime.timedelta(hours=1)},
        )
    engine.dispose()
    optuna.storages.fail_stale_trials(study)  # Optuna's own check, as the workers run it
    states = {t.number: t.state for t in optuna.load_study(study_name="s", storage=db_url).trials}
    assert states == {silent.number: TrialState.FAIL, alive.number: TrialState.RUNNING}
    assert stale == [silent.number]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_proxy_never_holds_more_db_connections_than_its_pool_and_one_lock(proxy, db_url):
    import psycopg

    storage = connect_proxy(proxy, 1, 2)
    study = optuna.create_study(study_name="s", storage=storage)
    lock = StudyLock(storage, "s")
    for _ in range(20):
        with lock:
            trial = study.ask()
            storage.record_heartbeat(trial._trial_id)
            optuna.storages.fail_stale_trials(study)
            study.tell(trial, 1.0)
    lock.acquire()
    database = make_url_database(db_url)
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        count = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()[0]
    lock.release()
    assert count <= 2 + 1  # the fixture's pool_size, and the lock held


def make_url_database(url: str) -> str:
    return sqlalchemy.engine.make_url(url).database


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_plain_optuna_proxy_or_a_silent_address_is_refused_in_seconds(db_url):
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(UserError, match=r"grpc://127.0.0.1:\d+ is not reachable .*storage-proxy"):
        connect_proxy(f"grpc://127.0.0.1:{port}", 1, 2, timeout=1)
    assert time.monotonic() - started < 10
    # Optuna's own proxy carries no study lock and no heartbeats: refused, saying so
    from optuna.storages._grpc.server import make_server

    server = make_server(optuna.storages.get_storage(db_url), "127.0.0.1", port)
    server.start()
    try:
        with pytest.raises(UserError, match="no sweeper storage proxy"):
            connect_proxy(f"grpc://127.0.0.1:{port}", 1, 2)
    finally:
        server.stop(0).wait()


@pytest.mark.parametrize("url", ["grpc://", "grpc://host:notaport", "grpc://host:1/db", "grpc://u:p@host:1"])
def test_a_proxy_url_that_is_no_host_and_port_is_refused(url):
    with pytest.raises(UserError, match="use grpc://HOST:PORT"):
        parse_proxy_url(url)


def test_report_and_the_proxy_itself_refuse_a_proxy_url_saying_to_give_the_database_url():
    with pytest.raises(UserError, match="report reads the study DB itself"):
        study_exists("grpc://127.0.0.1:13000", "s")
    with pytest.raises(UserError, match="itself a proxy"):
        make_proxy_server("grpc://127.0.0.1:13000", "127.0.0.1", _free_port())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_port_in_use_is_refused_naming_it(db_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            make_proxy_server(db_url, "127.0.0.1", port)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_worker_that_dies_holding_the_lock_through_the_proxy_releases_it(proxy):
    code = (
        "import os, sys; from sweeper.proxy_client import connect_proxy; from sweeper.storage import StudyLock\n"
        f"lock = StudyLock(connect_proxy({proxy!r}, 1, 2), 's'); lock.acquire(); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = StudyLock(connect_proxy(proxy, 1, 2), "s")
        assert not lock.acquire(wait=False)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        lock.acquire()  # the proxy saw the stream end: it waits no longer than that
        lock.release()
    finally:
        holder.kill()


@pytest.mark.slow
def test_an_unreachable_proxy_makes_the_worker_exit_2_in_seconds(workdir, tracking_uri, tiny_bert):
    spec = _spec(workdir, tiny_bert, trials=2)
    address = f"grpc://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sweeper", "worker", str(spec), "--storage", address],
        env=_env(workdir, "unused", tracking_uri),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"storage proxy {address} is not reachable" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert time.monotonic() - started < 60  # the imports and 5 s, not a hang
    assert not (workdir / "sweeper.db").exists()


def _start_proxy(storage: str, port: int, workdir, pool_size: int = 4) -> subprocess.Popen:
    proxy = subprocess.Popen(
        [sys.executable, "-m", "sweeper", "storage-proxy", "--storage", storage, "--port", str(port)]
        + ["--pool-size", str(pool_size)],
        env={**_env(workdir, storage, "unused"), "PGAPPNAME": "sweeper-proxy"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proxy.stdout:
        if "workers join with" in line:
            # read the rest as it comes, so that a full pipe never stops the proxy
            proxy.rest = []
            proxy.drain = threading.Thread(target=lambda: proxy.rest.extend(proxy.stdout), daemon=True)
            proxy.drain.start()
            return proxy
    raise AssertionError(f"the proxy did not start: {proxy.wait()}")


@pytest.mark.slow
def test_a_worker_killed_behind_the_proxy_is_replaced_and_its_trial_and_run_fail(
    workdir, tracking_uri, postgres_url, tiny_bert
):
    spec = _spec(workdir, tiny_bert, trials=6, head_epochs=10, stage_epochs=3)
    port = _free_port()
    proxy = _start_proxy(postgres_url, port, workdir)
    env = _env(workdir, f"grpc://127.0.0.1:{port}", tracking_uri)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "sweeper", "worker", str(spec), "--workers", "1"],
            env=env,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        victim, number = _kill_one_mid_trial(_load(postgres_url), workers)
        for index, worker in enumerate(workers):
            if index != victim:
                code, out = _finish(worker)
                assert code == 0, out[-3000:]
        proxy.send_signal(signal.SIGTERM)
        code = proxy.wait(30)
        proxy.drain.join(10)
        assert code == 0 and "stopped" in "".join(proxy.rest), proxy.rest[-20:]
    finally:
        for process in (*workers, proxy):
            process.kill()

    study = _load(postgres_url)
    killed = study.trials[number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
    assert [t.state in FINISHED for t in retries] == [True]
    assert retries[0].params == killed.params
    _assert_ends_exact(study, tracking_uri, total=6)
    run = MlflowClient(tracking_uri).get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "heartbeats" in run.data.tags["sweeper.reason"]


class _ConnectionPeak:
    """The most connections to ``database`` seen at once, sampled every 50 ms in a thread, not
    counting this test process's own (application_name ``sweeper-test``)."""

    def __init__(self, database: str) -> None:
        import psycopg

        self._admin = psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True)
        self._database, self.peak, self._stop = database, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name <> 'sweeper-test'"
        )
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._admin.execute(query, (self._database,)).fetchone()[0])

    def __enter__(self) -> _ConnectionPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._admin.close()


LOAD_WORKERS, LOAD_TRIALS, LOAD_POOL = 12, 60, 4


@pytest.mark.slow
@pytest.mark.parametrize("route", ["proxy", "direct"])
def test_twelve_workers_one_killed_end_exact_and_through_the_proxy_hold_only_its_pool(
    route, workdir, tracking_uri, postgres_url, tiny_bert, monkeypatch
):
    """The load test: 12 CPU workers, 60 trials of about a second, one worker SIGKILLed mid-trial.
    Through one proxy the DB sees its pool (+1 for the study lock, +2 slack); directly, the
    connections grow with the workers."""
    monkeypatch.setenv("PGAPPNAME", "sweeper-test")  # this process's own connections, not counted
    spec = _spec(workdir, tiny_bert, trials=LOAD_TRIALS, head_epochs=10, stage_epochs=3)
    database = sqlalchemy.engine.make_url(postgres_url).database
    proxy, storage = None, postgres_url
    if route == "proxy":
        port = _free_port()
        proxy = _start_proxy(postgres_url, port, workdir, pool_size=LOAD_POOL)
        storage = f"grpc://127.0.0.1:{port}"
    env = {**_env(workdir, storage, tracking_uri), "PGAPPNAME": "sweeper"}
    command = [sys.executable, "-m", "sweeper", "worker", str(spec), "--workers", "1"]
    with _ConnectionPeak(database) as connections:
        workers = [
            subprocess.Popen(
                command, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for _ in range(LOAD_WORKERS)
        ]
        try:
            victim, number = _kill_one_mid_trial(_load(postgres_url), workers)
            for index, worker in enumerate(workers):
                if index != victim:
                    code, out = _finish(worker, timeout=900)
                    if route == "direct" and "too many clients" in out:
                        # the server is shared with other tests: its limit, shown, not a flaw here
                        pytest.skip(
                            "PostgreSQL ran out of connections (max_connections) during the direct run"
                        )
                    assert code == 0, out[-3000:]
        finally:
            for process in (*workers, *([proxy] if proxy else [])):
                process.kill()

    study = _load(postgres_url)
    _assert_ends_exact(study, tracking_uri, total=LOAD_TRIALS)
    assert study.trials[number].state == TrialState.FAIL
    finished = [t for t in study.trials if t.state in FINISHED]
    span = (
        max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    ).total_seconds()
    print(
        f"\n{route}: {LOAD_WORKERS} workers, {len(finished)} trials in {span:.1f} s "
        f"({len(finished) / span:.2f} trials/s), peak DB connections {connections.peak}"
    )
    if route == "proxy":
        # + the study lock's own connection, + the last one's backend still exiting as the
        # next opens, + 1 of slack (6 measured)
        assert connections.peak <= LOAD_POOL + 3
    else:
        assert connections.peak >= LOAD_WORKERS  # at least one per worker


def _wait_for_a_running_trial(storage: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        study = _load(storage)
        # mid-training (an epoch reported), not while the trial is still being claimed: a trial
        # lost before its parameters were drawn is rerun with fresh ones, not its own
        if any(t.intermediate_values for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
            return
        time.sleep(0.05)
    raise AssertionError("no trial was ever seen running")


@pytest.mark.slow
def test_a_proxy_killed_mid_study_stops_its_worker_in_one_line_and_a_new_proxy_finishes_the_study(
    workdir, tracking_uri, postgres_url, tiny_bert
):
    spec = _spec(workdir, tiny_bert, trials=6, head_epochs=10, stage_epochs=3)
    port = _free_port()
    proxy = _start_proxy(postgres_url, port, workdir)
    env = _env(workdir, f"grpc://127.0.0.1:{port}", tracking_uri)
    command = [sys.executable, "-m", "sweeper", "worker", str(spec), "--workers", "1"]
    worker = subprocess.Popen(
        command, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for_a_running_trial(postgres_url)
        proxy.kill()
        proxy.wait()
        code, out = _finish(worker)
        assert code == 1, out[-3000:]
        assert f"storage proxy grpc://127.0.0.1:{port} stopped answering" in out
        assert "Traceback" not in out, out[-3000:]
        # the same address again: a new worker finishes the study, the lost trial failed and rerun
        proxy = _start_proxy(postgres_url, port, workdir)
        code, out = _finish(
            subprocess.Popen(
                command, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
        assert code == 0, out[-3000:]
    finally:
        worker.kill()
        proxy.kill()
    trials = _load(postgres_url).trials
    assert sum(t.state in FINISHED for t in trials) == 6
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    (lost,) = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.params for t in trials if t.system_attrs.get("failed_trial") == lost.number] == [lost.params]
    # its MLflow run (its id may never have reached the trial) ended FAILED; none is left RUNNING
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs if r.data.tags.get("optuna.trial") == str(lost.number)} == {"FAILED"}
