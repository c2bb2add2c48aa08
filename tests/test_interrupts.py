"""Ctrl-C and SIGTERM: one Interrupted in the main thread, its exit code 128 + the signal, later
signals ignored while the records are ended, and the request remembered for the next trial."""

from __future__ import annotations

import os
import signal

import pytest

from sweeper import interrupts
from sweeper.interrupts import Interrupted, signals_interrupt, stop_if_asked


@pytest.fixture(autouse=True)
def no_request_left(monkeypatch):
    monkeypatch.setattr(interrupts, "_received", [])


def test_sigterm_raises_interrupted_once_with_exit_code_143():
    with pytest.raises(Interrupted) as caught, signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # let the handler run
    assert caught.value.exit_code == 143 and str(caught.value) == "SIGTERM"


def test_a_second_signal_is_ignored_while_the_first_is_handled():
    with pytest.raises(Interrupted), signals_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while records are being ended
            signal.sigtimedwait([], 0)
    # the handlers before the block are back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


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
