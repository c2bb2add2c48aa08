"""The stores checked before anything is written, each in a few seconds: SQLite study DBs refused
on network filesystems, a study looked up without writing (no file, no table made), and MLflow's
tracking store (server, database, file or folder) refused with its URL named, password hidden."""

from __future__ import annotations

import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from sweeper.errors import UserError
from sweeper.reachable import (
    TIMEOUT_S,
    check_sqlite_file,
    check_tracking_store,
    filesystem_type,
    study_exists,
)
from sweeper.storage import make_storage
from tests.conftest import tmpfs


def test_sqlite_on_a_network_filesystem_is_refused(tmp_path):
    mounts = f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw,relatime 0 0\n"
    assert filesystem_type(tmp_path / "studies", mounts) == "nfs4"
    assert filesystem_type(Path("/home"), mounts) == "ext4"
    with pytest.raises(UserError) as caught:
        check_sqlite_file(str(tmp_path / "sweeper.db"), "sqlite:///sweeper.db", mounts)
    assert "network filesystem (nfs4)" in str(caught.value)
    assert "postgresql+psycopg://" in str(caught.value)
    # mount points with spaces are written with octal escapes
    assert filesystem_type(Path("/mnt/my share/x"), "//nas/s /mnt/my\\040share cifs rw 0 0") == "cifs"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe closes


def _refused(uri: str, *said: str, within: float = TIMEOUT_S + 3) -> str:
    started = time.monotonic()
    with pytest.raises(UserError) as caught:
        check_tracking_store(uri)
    assert time.monotonic() - started < within  # seconds, not MLflow's minutes of retries
    message = str(caught.value)
    assert "hunter2" not in message and all(part in message for part in said), message
    return message


def test_a_tracking_server_that_refuses_connections_is_refused_at_once_password_hidden():
    port = _closed_port()
    _refused(
        f"http://bob:hunter2@127.0.0.1:{port}",
        f"'http://bob:***@127.0.0.1:{port}' is not reachable",
        within=2,
    )


def test_a_tracking_server_that_never_answers_is_refused_after_a_few_seconds():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        _refused(f"http://127.0.0.1:{silent.getsockname()[1]}/", "is not reachable")
        assert time.monotonic() - started >= TIMEOUT_S - 0.5


def test_a_tracking_database_that_refuses_connections_is_refused_password_hidden():
    port = _closed_port()
    _refused(
        f"postgresql+psycopg://bob:hunter2@127.0.0.1:{port}/mlflow", "bob:***@127.0.0.1", "is not reachable"
    )


def test_a_running_tracking_database_and_a_writable_folder_pass(postgres_url, tmp_path):
    check_tracking_store(postgres_url)
    check_tracking_store(f"sqlite:///{tmp_path / 'not-yet' / 'mlflow.db'}")  # MLflow makes the folder
    check_tracking_store(str(tmp_path / "mlruns"))
    check_tracking_store(f"file://{tmp_path / 'mlruns'}")


def test_a_tracking_store_on_a_read_only_disk_is_refused(tmp_path):
    with tmpfs(tmp_path / "ro", readonly=True) as disk:
        _refused(f"sqlite:///{disk / 'mlflow.db'}", "is not writable")
        _refused(f"file://{disk / 'mlruns'}", "is not writable")


@pytest.mark.slow
def test_a_real_mlflow_server_passes(tracking_uri, workdir):
    from tests.test_browser import _mlflow_server

    with _mlflow_server(tracking_uri, workdir) as address:
        check_tracking_store(address)
        check_tracking_store(address + "/")


def test_a_study_is_looked_up_in_sqlite_without_writing_anything(tmp_path):
    url = f"sqlite:///{tmp_path / 'sweeper.db'}"
    assert not study_exists(url, "tiny")
    assert list(tmp_path.iterdir()) == []  # no file created

    storage = make_storage(url)
    storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "tiny")
    assert study_exists(url, "tiny")  # read while a writer has it open (the study is in its -wal)
    storage.engine.dispose()  # the last connection closes: SQLite folds the -wal into the file
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert study_exists(url, "tiny") and not study_exists(url, "other")
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # no -wal, -shm

    with closing(sqlite3.connect(tmp_path / "notes.db")) as connection:  # SQLite, but no study DB
        connection.execute("CREATE TABLE notes (text TEXT)")
    assert not study_exists(f"sqlite:///{tmp_path / 'notes.db'}", "tiny")


def test_a_study_is_looked_up_in_postgresql_without_creating_tables(postgres_url):
    assert not study_exists(postgres_url, "tiny")
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as connection:
        assert sqlalchemy.inspect(connection).get_table_names() == []  # Optuna's tables not made
    make_storage(postgres_url).create_new_study([optuna.study.StudyDirection.MAXIMIZE], "tiny")
    assert study_exists(postgres_url, "tiny") and not study_exists(postgres_url, "other")
    engine.dispose()


def test_looking_up_a_study_on_an_unreachable_server_is_refused_password_hidden():
    url = f"postgresql+psycopg://bob:hunter2@127.0.0.1:{_closed_port()}/optuna"
    with pytest.raises(UserError, match=r"bob:\*\*\*@127.0.0.1:\d+/optuna' is not reachable"):
        study_exists(url, "tiny")
