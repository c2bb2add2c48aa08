"""Ctrl-C and SIGTERM: raised once as :class:`Interrupted` in the main thread, so that whatever
runs ends its records (a trial failed, its MLflow run ended) before the process exits with
128 + the signal's number. Helper processes end with the process that started them
(:func:`die_with_parent`)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
    """Raise :class:`Interrupted` again if a signal asked this process to stop."""
    if _received:
        raise Interrupted(_received[0])


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(signum: int = signal.SIGKILL, parent: int | None = None) -> bool:
    """Have the kernel send this process ``signum`` when its parent dies (Linux; elsewhere a no-op
    returning False). ``parent``: the pid this process was started by, when the caller knows it;
    a parent that died before this call is caught then too, and the signal sent at once.

    The kernel's "parent" is the *thread* that forked this process: call this in processes
    started from a thread that lives as long as its process."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid() if parent is None else parent
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # it died before prctl: this process was handed to another
        os.kill(os.getpid(), signum)
    return True
