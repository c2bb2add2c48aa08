"""Worker processes on this machine: one per visible GPU, each seeing only its own device through
CUDA_VISIBLE_DEVICES (more workers than GPUs share them round robin), else N CPU workers that
split the cores. Each process runs ``sweeper worker SPEC --workers 1``, the same command that joins
the study from another machine; storage and tracking URLs travel in its environment, so a password
in them stays out of ``ps``.

The processes come from a multiprocessing *forkserver* that has imported sweeper (torch,
transformers, MLflow) once: a worker starts in about a second instead of re-importing everything.
Like 'spawn', and unlike 'fork', a worker inherits no threads, database connections or CUDA state
from the parent; the forkserver itself never touches CUDA.

Stopping: SIGINT (Ctrl-C) or SIGTERM raises :class:`Interrupted` in a worker, which marks its
running trial failed and ends its MLflow run; the parent passes SIGTERM on to its workers, waits for
them, and kills those that do not stop.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from sweeper.study import fail_trials_of_workers, finished_trials, reap_stale_trials

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE_SECONDS = 60  # time a worker gets to mark its trial failed after SIGTERM


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: stop, leaving every record ended. Exit code 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []  # the signal that asked this process to stop, once one has


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, once: later signals are
    ignored while the running trial is marked failed (a Ctrl-C also reaches the workers of a
    ``--workers`` parent, which then sends them SIGTERM). The request sticks: should code on the
    way swallow the exception, :func:`stop_if_asked` raises it again before the next trial."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        for s in SIGNALS:
            # a handler that does nothing, not SIG_IGN: Python would report a signal already
            # pending (Ctrl-C and the parent's SIGTERM arrive together) as an OSError
            signal.signal(s, lambda *_: None)
        _received.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_if_asked() -> None:
    if _received:
        raise Interrupted(_received[0])


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


def uses_gpus(device: str) -> bool:
    return device == "auto" or device.startswith("cuda")


def default_worker_count(device: str) -> int:
    """One worker per visible GPU; one on a CPU-only machine."""
    return max(1, len(visible_gpus())) if uses_gpus(device) else 1


@dataclass
class WorkerProcess:
    process: multiprocessing.Process
    gpu: str | None

    @property
    def worker_id(self) -> str:
        # matches sweeper.study.worker_id() inside the process
        return f"{socket.gethostname()}:{self.process.pid}"


def _forkserver() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["sweeper.runner"])
    return context


def start_forkserver() -> None:
    """Start the forkserver now: it imports sweeper while this process loads the model and data."""
    from multiprocessing import forkserver

    _forkserver()
    forkserver.ensure_running()


def start_workers(count: int, device: str, argv: list[str], env: dict[str, str]) -> list[WorkerProcess]:
    """Start ``count`` processes running ``sweeper worker`` with ``argv`` (``--workers 1`` and the
    device are added); ``env`` holds the settings they share (storage, tracking)."""
    gpus = visible_gpus() if uses_gpus(device) else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    context = _forkserver()
    workers = []
    for index in range(count):
        gpu = gpus[index % len(gpus)] if gpus else None
        # a GPU worker sees its GPU alone; CPU workers split the cores instead of each taking all
        child_env = {**env, "CUDA_VISIBLE_DEVICES": gpu or ""}
        threads = None if gpu is not None else max(1, cores // count)
        child_argv = ["worker", *argv, "--workers", "1", "--device", "cpu" if gpu is None else "cuda"]
        process = context.Process(
            target=_worker_main, args=(child_argv, child_env, threads), name=f"sweeper-worker-{index}"
        )
        process.start()
        workers.append(WorkerProcess(process, gpu))
    return workers


def _worker_main(argv: list[str], env: dict[str, str], threads: int | None) -> None:
    os.environ.update(env)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from sweeper.cli import main

    sys.exit(main(argv))


def wait_for(workers: list[WorkerProcess]) -> None:
    """Wait until every worker has exited; on Ctrl-C or SIGTERM stop them all, then re-raise."""
    try:
        for worker in workers:
            worker.process.join()
    except KeyboardInterrupt:
        stop(workers)
        raise


def stop(workers: list[WorkerProcess], grace: float = STOP_GRACE_SECONDS) -> None:
    for worker in workers:
        if worker.process.is_alive():
            os.kill(worker.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()


def run_workers(
    study: optuna.Study,
    total: int,
    count: int,
    device: str,
    argv: list[str],
    env: dict[str, str],
    mark_run_failed: Callable[[FrozenTrial, str], None],
    console,
) -> None:
    """Run ``count`` workers of ``study`` here until they exit; then end whatever trial a dead
    worker left running (and its MLflow run). Raises WorkersStopped when workers failed before the
    study reached its total."""
    workers = start_workers(count, device, argv, env)
    shown = ", ".join(f"{w.process.pid} ({f'GPU {w.gpu}' if w.gpu else 'CPU'})" for w in workers)
    console.print(f"study [bold]{study.study_name}[/bold]: {count} workers: {shown}")
    try:
        wait_for(workers)
    finally:
        # a worker that died mid-trial cannot end its trial: do it now, not after the grace period
        failed = fail_trials_of_workers(study, exit_reasons(workers), mark_run_failed)
        if failed:
            console.print(f"trials {failed} failed: their worker stopped")
        reap_stale_trials(study)
    finished, codes = finished_trials(study), [w.process.exitcode for w in workers]
    if finished < total and any(codes):  # short of the total without a --timeout
        raise WorkersStopped(f"workers exited with codes {codes}; {finished}/{total} trials finished")


class WorkersStopped(RuntimeError):
    """The workers exited, some with an error, before the study reached its total."""


def exit_reasons(workers: list[WorkerProcess]) -> dict[str, str]:
    """``{worker id: why it stopped}`` for the workers that exited with an error or a signal."""
    reasons = {}
    for worker in workers:
        code = worker.process.exitcode
        if code is None or code == 0:
            continue
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        reasons[worker.worker_id] = f"worker process {worker.process.pid} {how}"
    return reasons
