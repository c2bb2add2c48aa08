"""Worker processes on this machine: one per visible GPU, each seeing only its own device through
CUDA_VISIBLE_DEVICES (more workers than GPUs share them round robin), else N CPU workers that
split the cores. Each process calls the worker command's function with the parent's settings,
resolved once (``--workers 1`` and its device), exactly what ``sweeper worker`` does on another
machine. The settings travel pickled through the forkserver's pipe: a password in a URL never
appears on a command line or in an environment that ``ps`` shows.

The processes come from a multiprocessing *forkserver* that has imported sweeper (torch,
transformers, MLflow) once: a worker starts in about a second instead of re-importing everything.
Like 'spawn', and unlike 'fork', a worker inherits no threads, database connections or CUDA state
from the parent; the forkserver itself never touches CUDA.

Stopping: SIGINT (Ctrl-C) or SIGTERM raises `interrupts.Interrupted` in a worker, which marks its
running trial failed and ends its MLflow run; the parent passes SIGTERM on to its workers, waits for
them, and kills those that do not stop. A parent that dies without doing so (SIGKILL, OOM killer)
leaves no worker behind: each watches its parent's sentinel, stops as from SIGTERM when the parent
is gone, and kills itself should that take longer than the grace period. The
forkserver exits with the parent too (its own pipe closes), and the resource tracker when the last
of them is gone.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait

import optuna
import torch
from optuna.trial import FrozenTrial

from sweeper.records import worker_id
from sweeper.recovery import fail_trials_of_workers, reap_stale_trials
from sweeper.settings import Settings
from sweeper.study import finished_trials

STOP_GRACE_SECONDS = 60  # time a worker gets to mark its trial failed after SIGTERM
THREADS_GRACE_SECONDS = 5  # time the other threads get to end once the main thread has
# what the forkserver imports once, before it forks any worker
PRELOAD = ["sweeper.commands"]

WorkerMain = Callable[[Settings], None]  # a module-level function: the forkserver pickles it by name


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
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
        return worker_id(self.process.pid)  # as its trials record it


def _forkserver() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_forkserver() -> None:
    """Start the forkserver now: it imports sweeper while this process loads the model and data."""
    from multiprocessing import forkserver

    _forkserver()
    forkserver.ensure_running()


def start_workers(count: int, settings: Settings, main: WorkerMain) -> list[WorkerProcess]:
    """Start ``count`` processes, each running ``main(settings)`` with one worker and its device."""
    gpus = visible_gpus() if uses_gpus(settings.device) else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    context = _forkserver()
    workers = []
    for index in range(count):
        gpu = gpus[index % len(gpus)] if gpus else None
        # a GPU worker sees its GPU alone; CPU workers split the cores instead of each taking all
        env = {"CUDA_VISIBLE_DEVICES": gpu or "", "TOKENIZERS_PARALLELISM": "false"}
        threads = None if gpu is not None else max(1, cores // count)
        child = dataclasses.replace(settings, workers=1, device="cpu" if gpu is None else "cuda")
        process = context.Process(
            target=_worker_main,
            args=(main, child, env, threads, STOP_GRACE_SECONDS),
            name=f"sweeper-worker-{index}",
        )
        process.start()
        workers.append(WorkerProcess(process, gpu))
    return workers


def stop_when_parent_dies(grace: float = STOP_GRACE_SECONDS) -> threading.Thread:
    """In a worker process: once the process that started it is gone, stop as from SIGTERM (the
    running trial is marked failed); should that not end this process within ``grace`` seconds,
    SIGKILL it. (Its parent in the process tree is the forkserver; the sentinel is the
    starting process's.)"""
    sentinel = multiprocessing.parent_process().sentinel

    def watch() -> None:
        wait([sentinel])
        os.kill(os.getpid(), signal.SIGTERM)
        main = threading.main_thread()
        main.join(grace)
        if not main.is_alive():
            # the records are ended; a thread left running must not keep this process alive
            # (Optuna's heartbeat thread does when the signal lands while it is starting)
            time.sleep(THREADS_GRACE_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    watcher = threading.Thread(target=watch, name="sweeper-parent-watch", daemon=True)
    watcher.start()
    return watcher


def _worker_main(
    main: WorkerMain,
    settings: Settings,
    env: dict[str, str],
    threads: int | None,
    grace: float,
) -> None:
    stop_when_parent_dies(grace)
    os.environ.update(env)
    if threads is not None:
        torch.set_num_threads(threads)
    main(settings)


def wait_for(workers: list[WorkerProcess]) -> None:
    """Wait until every worker has exited; on Ctrl-C, SIGTERM or any error stop them all, then
    re-raise."""
    try:
        for worker in workers:
            worker.process.join()
    except BaseException:
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
    settings: Settings,
    count: int,
    main: WorkerMain,
    fail_run: Callable[[FrozenTrial, str], None],
    console,
) -> None:
    """Run ``count`` workers of ``study`` here until they exit; then end whatever trial a dead
    worker left running (and its MLflow run). Raises WorkersStopped when workers failed before the
    study reached its total."""
    workers = start_workers(count, settings, main)
    shown = ", ".join(f"{w.process.pid} ({f'GPU {w.gpu}' if w.gpu else 'CPU'})" for w in workers)
    console.print(f"study [bold]{study.study_name}[/bold]: {count} workers: {shown}")
    try:
        wait_for(workers)
    finally:
        # a worker that died mid-trial cannot end its trial: do it now, not after the grace period
        failed = fail_trials_of_workers(study, exit_reasons(workers), fail_run)
        if failed:
            console.print(f"trials {failed} failed: their worker stopped")
        reap_stale_trials(study)
    finished, codes = finished_trials(study), [w.process.exitcode for w in workers]
    if finished < settings.trials and any(codes):  # short of the total without a --timeout
        raise WorkersStopped(
            f"workers exited with codes {codes}; {finished}/{settings.trials} trials finished"
        )


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
