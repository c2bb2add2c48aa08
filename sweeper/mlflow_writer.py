"""The writes of trial runs to MLflow, made in order by a child process beside the training.

MLflow's client is Python-heavy (SQLAlchemy for a database store, HTTP for a server). In a thread
of the training process it takes the GIL between the training loop's kernel launches and slows
every step: a cached feature-extraction trial took twice as long as its arithmetic here. In a
child process it runs on another core, and the training process only pickles a few tuples.

Protocol: pickles over the child's stdin and stdout. Parent to child: the tracking URI first (never
on the command line, where ``ps`` shows it: it may hold a password), then ``(call id, op, run key,
args)``. Child to parent: ``(call id, ok, result or error text)``. A run is named by a key the
parent makes before the run exists; the child maps it to MLflow's run id. The child ends when its
stdin closes, after the writes already sent: when the tracker is closed, or its process exits or
is killed. It runs in a session of its own, so a Ctrl-C meant for the study does not cut it short.
A process forked from the training process (a DataLoader worker) gets /dev/null in place of the
child's pipes: its copy of the pipe would keep the child waiting for input after the training
process is gone, or while it closes the writer.

``DirectWriter`` makes the same writes at once, in the calling thread: for runs of trials that
another process ended, and where no child can be started.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

log = logging.getLogger(__name__)

# how long closing waits for the child to finish the writes already sent
CLOSE_TIMEOUT_S = 120


class MlflowWriteError(RuntimeError):
    """A write the child could not make (MLflow's message, as text)."""


# a key naming a run that is still being created (any other key is the run's id)
PENDING = "pending-"


def perform(client: MlflowClient, runs: dict[str, str], op: str, key: str, args: tuple) -> Any:
    """Make one write. ``create`` maps ``key`` to the new run's id; the other ops take the run's
    id, or a key that ``create`` mapped."""
    if op in ("ping", "open"):  # "open": the child has made its client, nothing more
        return None
    if op == "create":
        experiment_id, run_name, tags = args
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        runs[key] = run_id
        return run_id
    run_id = runs.get(key) or (None if key.startswith(PENDING) else key)
    if run_id is None:
        raise LookupError("its run was not created, or by an MLflow writer process that exited since")
    if op == "log":
        metrics, params, tags = args
        _log_batch(client, run_id, metrics, params, tags)
    elif op == "end":
        metrics, params, tags, status = args
        try:
            _log_batch(client, run_id, metrics, params, tags)
        finally:
            client.set_terminated(run_id, status)
    else:
        raise ValueError(f"unknown MLflow write {op!r}")
    return None


def _log_batch(client: MlflowClient, run_id: str, metrics, params, tags) -> None:
    if metrics or params or tags:
        client.log_batch(
            run_id,
            metrics=[Metric(*m) for m in metrics],
            params=[Param(*p) for p in params],
            tags=[RunTag(*t) for t in tags],
        )


class DirectWriter:
    """The writes made at once in this thread; an error is raised to the caller."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self._runs: dict[str, str] = {}

    def send(self, op: str, key: str, args: tuple = ()) -> Future:
        future: Future = Future()
        future.set_result(perform(self.client, self._runs, op, key, args))
        return future


class ProcessWriter:
    """The writes made by a child process, in the order sent; each ``send`` returns at once with
    the future of its result. The child starts with the first write, and again after it died."""

    def __init__(self, tracking_uri: str) -> None:
        self._tracking_uri = tracking_uri
        self._lock = threading.Lock()
        self._child: _Child | None = None

    def start(self) -> None:
        """Start the child now (it takes a second or two to import MLflow), not with the first
        write. It opens the tracking store only with ``open`` or the first write."""
        self.send("ping", "")

    def open(self) -> None:
        """Have the child open the tracking store now (it may take a second: a database store
        checks its schema), so that the first trial's run is created at once."""
        self.send("open", "")

    def send(self, op: str, key: str, args: tuple = ()) -> Future:
        with self._lock:
            if self._child is None or not self._child.alive or self._child.exited():
                try:
                    self._child = _Child(self._tracking_uri)
                except OSError as exc:
                    failed: Future = Future()
                    failed.set_exception(MlflowWriteError(f"the MLflow writer could not start: {exc}"))
                    return failed
            return self._child.send(op, key, args)

    def flush(self) -> None:
        """Wait for the writes sent so far (``MlflowWriteError`` if the child died first)."""
        with self._lock:
            child = self._child
        if child is not None:
            child.send("ping", "", ()).result()

    def close(self) -> None:
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            child.close()


def _widen(pipe) -> None:
    """A pipe of 1 MiB where Linux allows it (64 KiB by default): the training process never
    waits for a child that is still starting, or busy with a slow server."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


_children: weakref.WeakSet[_Child] = weakref.WeakSet()


def _release_pipes_in_forked_child() -> None:
    # over the same numbers, not closed: the pipe objects may still close them in this process
    null = os.open(os.devnull, os.O_RDWR)
    for child in list(_children):
        for pipe in (child._process.stdin, child._process.stdout):
            try:
                os.dup2(null, pipe.fileno())
            except (OSError, ValueError):
                pass  # closed already
    os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_pipes_in_forked_child)


class _Child:
    def __init__(self, tracking_uri: str) -> None:
        env = dict(os.environ)
        # the child imports this package from where this process did, installed or not
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "sweeper.mlflow_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        _widen(self._process.stdin)
        _children.add(self)
        self._pending: dict[int, Future] = {}
        self._pending_lock = threading.Lock()  # never held while the pipe may block
        self._write_lock = threading.Lock()  # one message into the pipe at a time
        self._next_id = 0
        self.alive = True
        self._write(pickle.dumps(tracking_uri))
        self._reader = threading.Thread(target=self._read_loop, name="sweeper-mlflow-read", daemon=True)
        self._reader.start()

    def exited(self) -> bool:
        return self._process.poll() is not None

    def send(self, op: str, key: str, args: tuple) -> Future:
        """Into the pipe before it returns: once sent, a write is made even if this process is
        killed the next moment."""
        future: Future = Future()
        with self._pending_lock:
            if not self.alive:
                future.set_exception(MlflowWriteError("the MLflow writer process exited"))
                return future
            call_id, self._next_id = self._next_id, self._next_id + 1
            self._pending[call_id] = future
        self._write(pickle.dumps((call_id, op, key, args)))
        return future

    def _write(self, message: bytes) -> None:
        with self._write_lock:
            try:
                self._process.stdin.write(message)
                self._process.stdin.flush()
            except (OSError, ValueError):
                pass  # the child died (the reader fails what is pending), or was closed

    def close(self) -> None:
        try:
            self._process.stdin.close()  # end of input: the child finishes the writes and exits
        except OSError:
            pass
        try:
            self._process.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("the MLflow writer did not finish within %ds; stopped", CLOSE_TIMEOUT_S)
            self._process.kill()
            self._process.wait()
        self._reader.join(CLOSE_TIMEOUT_S)

    def _read_loop(self) -> None:
        pipe = self._process.stdout
        try:
            while True:
                try:
                    call_id, ok, result = pickle.load(pipe)
                except (EOFError, OSError, pickle.UnpicklingError):
                    return
                with self._pending_lock:
                    future = self._pending.pop(call_id)
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(MlflowWriteError(result))
        finally:
            with self._pending_lock:
                self.alive = False
                pending, self._pending = self._pending, {}
            code = self._process.wait()
            for future in pending.values():
                future.set_exception(MlflowWriteError(f"the MLflow writer process exited (code {code})"))


def main() -> None:
    """The child: make the writes read from stdin, answer each on stdout, until stdin closes."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not break the protocol
    logging.basicConfig(level=logging.WARNING, format="sweeper mlflow writer: %(levelname)s %(message)s")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # a database error is logged there with a traceback, then raised: the answer carries it, and
    # the training process warns once per run
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    requests = sys.stdin.buffer
    try:
        tracking_uri = pickle.load(requests)
    except EOFError:
        return
    client: MlflowClient | None = None  # made with the first write: a started writer touches no store
    runs: dict[str, str] = {}
    answering = True
    while True:
        try:
            call_id, op, key, args = pickle.load(requests)
        except EOFError:
            return
        try:
            if client is None and op != "ping":
                client = MlflowClient(tracking_uri=tracking_uri)
            answer = (call_id, True, perform(client, runs, op, key, args))
        except Exception as exc:
            answer = (call_id, False, f"{type(exc).__name__}: {exc}")
        if answering:
            try:
                pickle.dump(answer, answers)
                answers.flush()
            except OSError:
                answering = False  # the parent is gone: make the writes already sent, unanswered


if __name__ == "__main__":
    main()
