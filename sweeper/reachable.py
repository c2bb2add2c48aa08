"""Can the stores be used? Checks made before anything is written, each in a few seconds: the
study DB's URL and file, a study looked up without writing (no file created, no table made), and
MLflow's tracking store (its server answers, its database accepts a connection, its folder can be
written). Each refusal is one UserError naming the URL with its password hidden."""

from __future__ import annotations

import http.client
import os
import re
import sqlite3
import ssl
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from sweeper.errors import UserError
from sweeper.redact import redact

TIMEOUT_S = 5  # per check: a store that does not answer by then is taken as unreachable
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores
# filesystem types (Linux /proc/mounts) on which SQLite's file locks are unreliable
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.rclone",
    }
)


def storage_url(url: str) -> URL:
    """The study DB's URL, parsed; one that is no database URL is refused."""
    try:
        return make_url(url)
    except ArgumentError:
        raise UserError(
            f"storage URL {redact(url)!r} is not a database URL; use sqlite:///path.db or "
            "postgresql+psycopg://user@host/db"
        ) from None


def check_sqlite_file(database: str | None, shown: str, mounts: str | None = None) -> None:
    """Refuse an SQLite study DB that is no file, in no folder, or on a network filesystem."""
    if not database or database == ":memory:" or database.startswith("file:"):
        raise UserError(f"storage URL {shown!r} names no file; use sqlite:///path/to/study.db")
    folder = Path(database).expanduser().resolve().parent
    if not folder.is_dir():
        raise UserError(f"storage URL {shown!r}: folder {folder} does not exist")
    kind = filesystem_type(folder, mounts)
    if kind in NETWORK_FILESYSTEMS:
        raise UserError(
            f"storage URL {shown!r}: {folder} is on a network filesystem ({kind}), where SQLite's "
            "locks do not hold and the study DB can be corrupted. Put the file on a local disk, or "
            "share the study through PostgreSQL: --storage postgresql+psycopg://user@host/db"
        )


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path``, from /proc/mounts (``None`` where unknown)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    path = Path(path)
    best: tuple[int, str | None] = (-1, None)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape_mount_field(fields[1]))
        if (path == point or point in path.parents) and len(point.parts) > best[0]:
            best = (len(point.parts), fields[2])
    return best[1]


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes (\040 ...)
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def study_exists(url: str, name: str) -> bool:
    """Whether the study DB at ``url`` holds the study ``name``, looked up without writing: a
    missing SQLite file is no study (and is not created), an existing one is opened read-only; a
    server's tables are only read (none is created)."""
    if url.startswith("grpc://"):
        raise UserError(
            f"report reads the study DB itself, not through the storage proxy {url}: give --storage "
            "the database URL that `python -m sweeper storage-proxy` serves"
        )
    parsed = storage_url(url)
    shown = redact(url)
    query = "SELECT 1 FROM studies WHERE study_name = :name"
    try:
        if parsed.get_backend_name() == "sqlite":
            check_sqlite_file(parsed.database, shown)
            return _sqlite_holds(Path(parsed.database).expanduser(), query, name)
        engine = sqlalchemy.create_engine(parsed, **_connect_timeout(parsed))
        try:
            with engine.connect() as connection:
                if not sqlalchemy.inspect(connection).has_table("studies"):
                    return False
                return connection.execute(sqlalchemy.text(query), {"name": name}).first() is not None
        finally:
            engine.dispose()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"storage URL {shown!r} is not reachable: {_first_line(exc)}") from None


def _sqlite_holds(path: Path, query: str, name: str) -> bool:
    if not path.is_file():
        return False
    # read-only; with no -wal file beside it (no writer now) the file holds everything, and
    # `immutable` keeps SQLite from creating -wal and -shm files to read it
    immutable = "" if Path(f"{path}-wal").exists() else "&immutable=1"
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro{immutable}"
    with closing(sqlite3.connect(uri, uri=True, timeout=TIMEOUT_S)) as connection:
        tables = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'")
        if tables.fetchone() is None:
            return False
        return connection.execute(query.replace(":name", "?"), (name,)).fetchone() is not None


def check_tracking_store(uri: str) -> None:
    """Refuse an MLflow tracking URI whose store cannot be used, within a few seconds (MLflow
    itself retries for minutes): an http(s) server must answer ``GET /health``; a database must
    accept a connection; an SQLite file or a local folder store must be writable. Other schemes
    (databricks, ...) are left to MLflow."""
    shown = redact(uri)
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri, shown)
    elif scheme.split("+")[0] == "sqlite":
        _check_writable(Path(make_url(uri).database or "mlflow.db").expanduser(), shown)
    elif scheme.split("+")[0] in DATABASE_SCHEMES:
        _check_database(uri, shown)
    elif scheme in ("", "file") or len(scheme) == 1:  # a folder (C: is a Windows drive)
        path = urllib.parse.urlsplit(uri).path if scheme == "file" else uri
        _check_writable(Path(urllib.parse.unquote(path)).expanduser(), shown)


def _check_server(uri: str, shown: str) -> None:
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]  # credentials go through MLflow's own settings
    health = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=TIMEOUT_S):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # it answers (a proxy may want credentials that MLflow will send)
            return
        reason = f"GET {redact(health)} answered {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):  # it answers; its certificate is MLflow's business
            return
        reason = _first_line(exc.reason)
    except (OSError, http.client.HTTPException) as exc:  # the read timed out, no HTTP answer
        reason = _first_line(exc) if str(exc) else f"no answer in {TIMEOUT_S} s"
    raise UserError(_unreachable(shown, reason))


def _check_database(uri: str, shown: str) -> None:
    try:
        parsed = make_url(uri)
        engine = sqlalchemy.create_engine(parsed, **_connect_timeout(parsed))
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as exc:
        raise UserError(_unreachable(shown, _first_line(exc))) from None


def _check_writable(path: Path, shown: str) -> None:
    """The store's file or folder, or the nearest folder above it that exists, can be written."""
    existing = next(p for p in (path, *path.absolute().parents) if p.exists() or p == Path(p.anchor))
    if not os.access(existing, os.W_OK):
        raise UserError(
            f"MLflow tracking URI {shown!r}: {existing} is not writable; use a folder you can write to"
        )


def _connect_timeout(parsed: URL) -> dict:
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "mysql"):
        return {"connect_args": {"connect_timeout": TIMEOUT_S}}
    if backend == "mssql":
        return {"connect_args": {"timeout": TIMEOUT_S}}
    return {}


def _unreachable(shown: str, reason: str) -> str:
    return (
        f"MLflow tracking URI {shown!r} is not reachable: {reason}. Start the tracking server or the "
        "database, or point --tracking-uri (or MLFLOW_TRACKING_URI) at one that runs"
    )


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else type(exc).__name__
