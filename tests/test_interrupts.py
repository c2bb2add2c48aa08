"""Ctrl-C and SIGTERM: one Interrupted in the main thread, its exit code 128 + the signal, later
signals ignored while the records are ended, and the request remembered for the next trial; a
helper process dies with its parent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeper import interrupts
from sweeper.interrupts import Interrupted, signals_interrupt, stop_if_asked

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


@pytest.fixture(autouse=True)
def no_request_left(monkeypatch):
    monkeypatch.setattr(interrupts, "_received", [])


def test_sigterm_raises_interrupted_once_with_exit_code_143():
    with pytest.raises(Interrupted) as caught, signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # let the handler run
    assert caught.value.exit_code == 143 and str(caught.value) == "SIGTERM"


def test_a_second_signal_is_ignored_while_the_first_is_handled():
    # whatever they were: a shell starting pytest in the background sets SIGINT to SIG_IGN
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted), signals_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while records are being ended
            signal.sigtimedwait([], 0)
    # the handlers before the block are back
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_swallowed_request_is_raised_again_before_the_next_trial():
    with signals_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)
        except Interrupted:
            pass  # as code on the way might
        with pytest.raises(Interrupted) as caught:
            stop_if_asked()
    assert caught.value.exit_code == 130


def test_nothing_asked_nothing_raised():
    stop_if_asked()


# a parent that starts a child calling die_with_parent, prints the child's pid, then waits
_PARENT = """
import os, sys, time
pid = os.fork()
if pid == 0:
    from sweeper.interrupts import die_with_parent
    die_with_parent()
    print(os.getpid(), flush=True)
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):  # dead, not yet reaped by its new parent
            return True
        time.sleep(0.02)
    return False


@linux_only
def test_a_child_that_dies_with_its_parent_is_killed_the_moment_the_parent_is():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    try:
        assert _gone_within(child, 2), f"process {child} outlived its parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@linux_only
def test_a_parent_already_dead_when_asked_kills_the_child_at_once():
    # the parent died between fork and prctl: the child was handed to another process already
    pid = os.fork()
    if pid == 0:
        interrupts.die_with_parent(signal.SIGKILL, parent=os.getppid() + 1_000_000)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
