"""One progress line per epoch: trial, stage, epoch, metric, time spent and time left."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total_trials: int, already_finished: int, metric: str, console: Console | None = None):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.total = total_trials
        self.finished = already_finished
        self.metric = metric
        self.started = time.perf_counter()
        self._trial_started = self.started
        self._trial_seconds: list[float] = []
        self._epoch_seconds: list[float] = []

    def trial_started(self, number: int, strategy: str, params: dict) -> None:
        self._trial_started = time.perf_counter()
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        self.console.print(f"[bold]trial {number}[/bold] ({strategy}) {shown}")

    def epoch(
        self,
        number: int,
        stage: int,
        stages: int,
        epoch: int,
        epochs: int,
        value: float,
        seconds: float,
    ) -> None:
        self._epoch_seconds.append(seconds)
        in_trial = time.perf_counter() - self._trial_started
        left_in_trial = (epochs - epoch - 1) * (sum(self._epoch_seconds) / len(self._epoch_seconds))
        self.console.print(
            f"  trial {number} \\[{self.finished + 1}/{self.total}] stage {stage}/{stages - 1} "
            f"epoch {epoch + 1}/{epochs} val_{self.metric} {value:.4f} "
            f"· {_clock(in_trial)} in trial · ~{_clock(left_in_trial + self._left_after_this())} left"
        )

    def trial_ended(self, number: int, state: str, value: float | None, reason: str = "") -> None:
        self._trial_seconds.append(time.perf_counter() - self._trial_started)
        if state in ("COMPLETE", "PRUNED"):
            self.finished += 1
        shown = f" val_{self.metric} {value:.4f}" if value is not None else ""
        extra = f" ({escape(reason)})" if reason else ""
        self.console.print(f"  trial {number} {state.lower()}{shown}{extra}")

    def _left_after_this(self) -> float:
        if not self._trial_seconds:
            return 0.0
        remaining = max(0, self.total - self.finished - 1)
        return remaining * sum(self._trial_seconds) / len(self._trial_seconds)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
