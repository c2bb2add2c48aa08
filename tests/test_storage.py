"""The study DB for many workers: SQLite in WAL mode with a busy timeout, PostgreSQL with small
pre-pinged pools, heartbeat settings, the study lock that makes creating a study and claiming a
trial atomic across processes (on PostgreSQL, SQLite and MariaDB/MySQL), and the report lock."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from sweeper.errors import UserError
from sweeper.storage import Heartbeat, StudyLock, make_storage
from tests.conftest import write_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["postgresql", "sqlite", "mysql"])
def storage_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweeper.db'}"
    return request.getfixturevalue({"postgresql": "postgres_url", "mysql": "mysql_url"}[request.param])


def test_sqlite_study_db_uses_wal_and_waits_for_the_write_lock(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'sweeper.db'}")
    # WAL: readers never block the writer; the mode is stored in the file
    with sqlite3.connect(tmp_path / "sweeper.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # each connection waits up to a minute for the write lock instead of failing 'database is locked'
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000
        # commits wait for the disk only at checkpoints (1 = NORMAL)
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1


def test_postgresql_storage_survives_dropped_connections(postgres_url):
    import psycopg

    storage = make_storage(postgres_url)
    assert storage.engine.pool.size() == 2  # many workers × small pools
    assert storage.engine_kwargs["connect_args"] == {"connect_timeout": 10}
    storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "tiny")
    # the server drops every connection (restart, idle timeout): pool_pre_ping reconnects
    name = postgres_url.rpartition("/")[2]
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    assert [s.study_name for s in storage.get_all_studies()] == ["tiny"]


def test_heartbeat_settings_default_to_minutes_and_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("SWEEPER_HEARTBEAT_INTERVAL", raising=False)
    monkeypatch.delenv("SWEEPER_HEARTBEAT_GRACE", raising=False)
    assert Heartbeat.from_env() == Heartbeat(interval=30, grace=120)
    monkeypatch.setenv("SWEEPER_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "4")
    assert Heartbeat.from_env() == Heartbeat(interval=1, grace=4)
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "1")  # a live worker would be taken for dead
    with pytest.raises(UserError, match="must exceed"):
        Heartbeat.from_env()
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "soon")
    with pytest.raises(UserError, match="whole number of seconds"):
        Heartbeat.from_env()


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


LOCK_THEN_REPORT = """
import sys, time
from sweeper.storage import StudyLock, make_storage
lock = StudyLock(make_storage(sys.argv[1]), "tiny")
print("ready", flush=True)
with lock:
    print(time.time(), flush=True)
"""


def _waiting_for_the_lock(storage_url: str) -> int:
    """How many sessions or processes wait for a study lock now, as the backend itself says."""
    if storage_url.startswith("sqlite"):
        inode = Path(storage_url.removeprefix("sqlite:///") + ".lock").stat().st_ino
        return sum(
            " -> FLOCK " in line and line.split()[6].endswith(f":{inode}") for line in open("/proc/locks")
        )
    engine = make_storage(storage_url).engine
    query = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        if engine.dialect.name == "postgresql"
        else "SELECT count(*) FROM information_schema.PROCESSLIST WHERE STATE = 'User lock'"
    )
    with engine.connect() as connection:
        return int(connection.execute(sqlalchemy.text(query)).scalar())


@pytest.mark.slow
def test_the_study_lock_excludes_other_processes(storage_url):
    lock = StudyLock(make_storage(storage_url), "tiny")
    with lock:
        other = _python(LOCK_THEN_REPORT, storage_url)
        assert other.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not _waiting_for_the_lock(storage_url) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the handshake: the other process blocks on the lock
        assert _waiting_for_the_lock(storage_url) == 1
        released = time.time()
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert float(out) >= released  # it got the lock only once this process let go


OPEN_TOGETHER = """
import sys, time
from pathlib import Path
from sweeper.spec import load_spec
from sweeper.storage import StudyLock, make_storage
from sweeper.identity import StudyIdentity
from sweeper.study import open_study
spec, url, go = load_spec(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
storage = make_storage(url)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
open_study(spec, storage, StudyLock(storage, spec.study.name), StudyIdentity({}, "data", "weights"))
"""


@pytest.mark.slow
def test_workers_creating_the_study_together_queue_the_baselines_once(tmp_path, storage_url):
    spec = write_spec(tmp_path)
    go = tmp_path / "go"
    workers = [_python(OPEN_TOGETHER, str(spec), storage_url, str(go)) for _ in range(4)]
    for worker in workers:  # all of them at the start line, their storage open
        assert worker.stdout.readline().strip() == "ready"
    go.touch()
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert [t.state for t in study.trials] == [TrialState.WAITING] * 2
    assert [t.system_attrs["fixed_params"]["unfrozen_blocks"] for t in study.trials] == [0, 2]


def test_a_report_lock_is_its_own_lock_per_study_and_can_be_tried_without_waiting(storage_url):
    storage = make_storage(storage_url)
    report = StudyLock(storage, "tiny", scope="report")
    assert report.acquire(wait=False)
    try:
        with StudyLock(storage, "tiny"):  # a report running does not block the study's workers
            pass
        assert not StudyLock(storage, "tiny", scope="report").acquire(wait=False)  # a second report
        other = StudyLock(storage, "other", scope="report")  # another study's report goes on
        assert other.acquire(wait=False)
        other.release()
    finally:
        report.release()
    again = StudyLock(storage, "tiny", scope="report")
    assert again.acquire(wait=False)
    again.release()


def test_a_new_sqlite_study_db_on_a_full_disk_is_refused_naming_the_disk_and_leaves_no_file(tmp_path):
    from tests.conftest import tmpfs

    with tmpfs(tmp_path / "disk", size="64k") as disk:
        _fill(disk)
        with pytest.raises(UserError) as refused:
            make_storage(f"sqlite:///{disk / 'study.db'}")
        assert f"the disk under {disk} refused a write" in str(refused.value)
        assert "not reachable" not in str(refused.value)
        assert sorted(p.name for p in disk.iterdir()) == ["fill"]


def test_an_existing_sqlite_study_db_on_a_disk_that_filled_is_refused_naming_the_disk_and_kept(tmp_path):
    from tests.conftest import tmpfs

    with tmpfs(tmp_path / "disk", size="2m") as disk:
        url = f"sqlite:///{disk / 'study.db'}"
        storage = make_storage(url)
        optuna.create_study(study_name="kept", storage=storage)
        storage.engine.dispose()
        _fill(disk)
        with pytest.raises(UserError) as refused:
            make_storage(url)
        assert f"the disk under {disk} refused a write" in str(refused.value)
        assert (disk / "study.db").stat().st_size > 0


def _fill(disk: Path) -> None:
    """Write zeros into ``disk`` until it is full."""
    descriptor = os.open(disk / "fill", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(descriptor)
