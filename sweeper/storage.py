"""The study database: an Optuna RDB storage fit for many workers, and a study-wide lock.

PostgreSQL is the shared backend: any number of workers on any number of machines. SQLite serves
one machine: its file is switched to WAL (readers never block the writer, commits wait for the
disk only at checkpoints) and every connection waits up to a busy timeout for the write lock, so several local workers share it without
'database is locked'. SQLite on a network filesystem is refused (reachable.py): its locks do not hold there.

Every trial sends heartbeats; a trial whose worker stopped sending them (killed, machine lost) is
failed by the next worker that looks (recovery.py says what else happens then).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
import warnings
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

from sweeper.errors import UserError
from sweeper.proxy_client import ProxyStorage, connect_proxy, is_proxy_url
from sweeper.reachable import check_sqlite_file, storage_url
from sweeper.redact import redact

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60


@dataclass(frozen=True)
class Heartbeat:
    """How often a running trial says it is alive, and how long silence means its worker is gone.

    Environment: SWEEPER_HEARTBEAT_INTERVAL and SWEEPER_HEARTBEAT_GRACE (whole seconds).
    """

    interval: int = 30
    grace: int = 120

    @classmethod
    def from_env(cls) -> Heartbeat:
        interval = _seconds_from_env("SWEEPER_HEARTBEAT_INTERVAL", cls.interval)
        grace = _seconds_from_env("SWEEPER_HEARTBEAT_GRACE", cls.grace)
        if grace <= interval:
            raise UserError(
                f"SWEEPER_HEARTBEAT_GRACE is {grace}, but must exceed SWEEPER_HEARTBEAT_INTERVAL "
                f"({interval}): a live worker would be taken for dead"
            )
        return cls(interval, grace)


def _seconds_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{name} is {text!r}; use a whole number of seconds, at least 1")
    return int(text)


StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


def make_storage(
    url: str,
    heartbeat: Heartbeat | None = None,
    on_stale_trial: StaleTrialCallback | None = None,
    pool_size: int | None = None,
) -> optuna.storages.RDBStorage | ProxyStorage:
    """An RDB storage fit for its backend, or the storage proxy at ``grpc://host:port``; an
    unusable URL is one UserError (password hidden).

    ``on_stale_trial(study, trial)`` is Optuna's heartbeat-stale callback: it runs for each trial
    failed because its worker went silent (recovery.StaleTrialCallback queues it again).
    ``pool_size``: a fixed pool of that many DB connections (the storage proxy's), instead of a
    small pool per worker that may grow.
    """
    heartbeat = heartbeat or Heartbeat.from_env()
    if is_proxy_url(url):
        return connect_proxy(url, heartbeat.interval, heartbeat.grace, on_stale_trial)
    shown = redact(url)
    parsed = storage_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        check_sqlite_file(parsed.database, shown)
        existed = Path(parsed.database).expanduser().exists()
    try:
        if backend == "sqlite":
            _use_wal_journal(parsed.database)
        storage = _rdb_storage(url, _engine_kwargs(backend, pool_size), heartbeat, on_stale_trial)
        if backend == "sqlite":
            _sync_at_checkpoints(storage.engine)
        return storage
    except Exception as exc:
        first = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        if backend == "sqlite" and any(sign in first for sign in _SQLITE_DISK_FAILURES):
            raise UserError(
                _sqlite_disk_failed(Path(parsed.database).expanduser(), shown, first, existed)
            ) from None
        raise UserError(f"storage URL {shown!r} is not reachable: {first}") from None


# what sqlite3 says when the disk under the file is full or failing, not the database unreachable
_SQLITE_DISK_FAILURES = ("database or disk is full", "disk I/O error", "readonly database")


def _sqlite_disk_failed(path: Path, shown: str, reason: str, existed: bool) -> str:
    """The message for an SQLite study DB whose disk refused a write; a file this call created
    (empty, or a header only) is removed, so nothing half-written stays."""
    if not existed:
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
            leftover.unlink(missing_ok=True)
    try:
        free = f"{os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize // 1024} KiB free"
    except OSError:
        free = "free space unknown"
    return (
        f"storage URL {shown!r}: the disk under {path.parent} refused a write ({reason}; {free}). "
        "Free space there or make it writable, or give --storage a database on another disk"
    )


def _engine_kwargs(backend: str, pool_size: int | None = None) -> dict:
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    # many workers × (main thread + heartbeat thread + study lock): keep each pool small
    kwargs = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 3, "pool_recycle": 1800}
    if pool_size is not None:  # the proxy: never more; its many threads wait their turn
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=300)
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def _rdb_storage(url: str, engine_kwargs: dict, heartbeat: Heartbeat, on_stale) -> optuna.storages.RDBStorage:
    # workers starting together on a new database race to create Optuna's tables; the losers
    # see 'already exists' or a duplicate key, and find the tables there on a second try
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat.interval,
                    grace_period=heartbeat.grace,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except sqlalchemy.exc.DBAPIError as exc:
            message = str(exc).lower()
            lost_race = any(sign in message for sign in ("already exists", "duplicate", "unique constraint"))
            if not lost_race or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _use_wal_journal(database: str) -> None:
    """Switch the file to WAL once (the mode is stored in the file); workers starting together
    may find it busy for a moment."""
    path = str(Path(database).expanduser())
    for attempt in range(20):
        try:
            with closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)) as connection:
                connection.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 19:
                raise
            time.sleep(0.1 * (attempt + 1))


def _sync_at_checkpoints(engine: sqlalchemy.Engine) -> None:
    """``synchronous=NORMAL``: in WAL mode a commit no longer waits for the disk, only checkpoints
    do. The file stays consistent through a crash of any process; a power cut may lose the last
    commits (trials then run again). It halves the time of Optuna's many small writes."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _normal(connection, _record) -> None:
        connection.execute("PRAGMA synchronous=NORMAL")

    engine.dispose()  # connections opened before the listener reconnect with it


def _get_mysql_lock(connection: sqlalchemy.Connection, name: str, wait: bool = True) -> bool:
    """Take a MySQL/MariaDB named lock (held by the session until released or disconnected).
    MariaDB takes no negative (endless) timeout: it answers NULL at once and locks nothing. So
    wait in rounds of an hour, and make sure the answer is 1."""
    while True:
        got = connection.execute(
            sqlalchemy.text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": 3600 if wait else 0}
        ).scalar()
        if got == 1 or (got == 0 and not wait):
            return got == 1
        if got is None:
            raise RuntimeError(f"MySQL could not take the study lock {name!r}")


class StudyLock:
    """A lock over one study, held by one worker process at a time, on any machine.

    It makes the steps that read and then write the study atomic across workers: creating the
    study and queueing its baselines, and claiming a trial only while the study is short of
    finished + running trials. PostgreSQL: a transaction-level advisory lock (released with the
    transaction, or when the connection drops). MySQL/MariaDB: a named lock of the session
    (released, or dropped with the connection). SQLite: ``flock`` on a file beside the database
    (released when the process exits). Through the storage proxy: the proxy takes the DB's lock
    and holds it while this worker's stream to it stays open (proxy_client.ProxyLock). ``release``
    may be called early and again.

    Another ``scope`` is another lock over the same study: ``"report"`` lets one `report` at a
    time confirm the study, while its workers go on under the ``"study"`` lock.
    """

    def __init__(self, storage, study_name: str, scope: str = "study") -> None:
        self._remote = storage.lock(study_name, scope) if isinstance(storage, ProxyStorage) else None
        if self._remote is not None:
            return
        self._engine = storage.engine
        name = f"sweeper:{study_name}" if scope == "study" else f"sweeper:{scope}:{study_name}"
        digest = hashlib.sha256(name.encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        # SQLite: the study lock is one file per database; other scopes get one per study
        suffix = "" if scope == "study" else f".{scope}-{digest[:6].hex()}"
        self._file = f"{self._engine.url.database}{suffix}.lock"
        self._held: object | None = None

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock, waiting for it (or, with ``wait`` false, only if it is free now);
        returns whether it is held."""
        if self._remote is not None:
            return self._remote.acquire(wait)
        backend, got = self._engine.dialect.name, True
        if backend == "postgresql":
            connection = self._engine.connect()
            take = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
            got = connection.execute(sqlalchemy.text(f"SELECT {take}(:key)"), {"key": self._key}).scalar()
            self._held = connection
        elif backend == "sqlite":
            import fcntl

            self._held = open(self._file, "a")  # noqa: SIM115 (held until release)
            try:
                fcntl.flock(self._held, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                got = False
        elif backend == "mysql":
            self._held = connection = self._engine.connect()
            try:
                got = _get_mysql_lock(connection, f"sweeper{self._key}", wait)
            except BaseException:
                self.release()
                raise
        else:
            self._held = True
            log.warning("no study lock for %s: concurrent workers may overshoot the trial total", backend)
        if wait or got is not False:
            return True
        self.release()
        return False

    def release(self) -> None:
        if self._remote is not None:
            return self._remote.release()
        held, self._held = self._held, None
        if held is None or held is True:
            return
        if isinstance(held, sqlalchemy.Connection):
            try:
                if self._engine.dialect.name == "mysql":
                    held.execute(
                        sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": f"sweeper{self._key}"}
                    )
                held.rollback()  # ends the transaction, and with it the advisory lock
            finally:
                held.close()
        else:
            held.close()  # closing the file drops the flock

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
