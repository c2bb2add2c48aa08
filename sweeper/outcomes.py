"""What a command hands back to the CLI: a typed outcome per command, with the lines it prints
(the decision, and where the report, the study DB and the MLflow runs are)."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from sweeper.redact import redact
from sweeper.report import Report
from sweeper.report.screen import kept_text
from sweeper.report.summary import render_summary_text
from sweeper.screen import ScreenResult


@dataclass(frozen=True)
class Where:
    """Where a command left its records, for the user to open."""

    reports: Path  # the report folder
    storage: str
    tracking_uri: str
    runs_url: str  # the MLflow runs table of the study's experiment

    def lines(self) -> list[str]:
        storage, tracking = redact(self.storage), redact(self.tracking_uri)
        lines = [
            f"report:   {self.reports}/report.md, report.html, report.json",
            f"study DB: {storage}   (optuna-dashboard {storage})",
            f"MLflow:   {tracking}",
        ]
        if tracking.startswith("sqlite:"):
            lines += [
                f"open it:  mlflow ui --backend-store-uri {tracking} --port 5000",
                f"          then {self.runs_url}",
            ]
        else:
            lines.append(f"open it:  {self.runs_url}")
        return lines


@dataclass(frozen=True)
class StudyOutcome:
    """A study run to its total, and its search-only report (``report`` confirms it)."""

    report: Report
    where: Where

    @property
    def out(self) -> Path:
        return self.where.reports

    def lines(self) -> list[str]:
        return _decision_lines(self.report) + self.where.lines()


@dataclass(frozen=True)
class WorkerOutcome:
    study: str
    finished: int
    total: int

    def lines(self) -> list[str]:
        return [f"worker done: study {self.study} holds {self.finished}/{self.total} finished trials"]


@dataclass(frozen=True)
class ReportOutcome:
    """One report per spec; several specs also share one table (``out`` holds it)."""

    reports: list[Report]
    where: Where
    several: bool  # several specs or a folder: one table across them

    @property
    def out(self) -> Path:
        return self.where.reports

    def lines(self) -> list[str]:
        if self.several:
            head = ["\n" + escape(render_summary_text(self.reports))]
        else:
            head = _decision_lines(self.reports[0])
        return head + self.where.lines()


@dataclass(frozen=True)
class ScreenedOutcome:
    """A spec with [model] candidates: the screen (`study`; none where `worker` joined the studies
    it kept) and the outcome of each kept candidate's study."""

    screen: ScreenResult | None
    outcomes: list[StudyOutcome | WorkerOutcome]

    def lines(self) -> list[str]:
        # the ranking was printed before the studies ran; each report opens with it
        kept = ", ".join(c.study for c in self.screen.kept) if self.screen is not None else ""
        head = [f"\nscreen: kept {kept} of {len(self.screen.ranking)} candidates"] if kept else []
        return head + [line for outcome in self.outcomes for line in outcome.lines()]


Outcome = StudyOutcome | WorkerOutcome | ReportOutcome | ScreenedOutcome


def screen_lines(screen: ScreenResult) -> list[str]:
    """The screen's ranking as the terminal shows it: one line per candidate, best probe first."""
    lines = [
        f"\n[bold]screen: {len(screen.ranking)} candidates in {screen.seconds:.1f} s, ranked by the "
        f"linear probe (balanced accuracy on val, chance {1 / screen.num_classes:.3f}); "
        f"{kept_text(screen.keep)}[/bold]"
    ]
    for rank, c in enumerate(screen.ranking, 1):
        lines.append(
            f"  {rank}. {escape(c.candidate)}{'' if c.pretrained else ' (not pretrained)'}: probe "
            f"{c.probe:.4f}, LogME {c.logme:.4f}, {c.seconds:.1f} s"
            + (f"  -> study {c.study}" if c.kept else "")
        )
    agree = "in the same order" if screen.logme_agrees else "in another order: the probe decides"
    return lines + [f"  LogME ranks them {agree}"]


def _decision_lines(report: Report) -> list[str]:
    lines = [f"\n[bold]decision: {report.decision.replace('_', ' ')}[/bold]", f"  {escape(report.reason)}"]
    if report.compares_methods and report.cheapest_method:  # several methods: the cheapest that is as good
        lines.append(f"  {escape(report.cheapest_reason)}")
    return lines


class CommandInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a command; the message says what was kept. Exit code 128 + signal."""

    def __init__(self, kept: str, exit_code: int) -> None:
        super().__init__(kept)
        self.exit_code = exit_code


class ReportInterrupted(CommandInterrupted):
    """Ctrl-C or SIGTERM stopped `report`: the report written or not, the confirmation runs kept."""

    def __init__(self, out: Path, written: bool, exit_code: int) -> None:
        if written:
            kept = (
                f"the report was written to {out}; it may be missing from the study's MLflow run "
                "(run `report` again to record it, without training)"
            )
        else:
            kept = (
                "the confirmation runs finished so far are kept in the study DB, and the next "
                f"`report` reuses them; nothing was written to {out}"
            )
        super().__init__(kept, exit_code)


class ReportNotRecorded(Exception):
    """The report folder is written, but MLflow could not store its copy or its figures on the
    study's run (a full or read-only disk under MLflow's artifacts or its database). Exit code 1."""

    exit_code = 1

    def __init__(self, out: Path, error: OSError | str) -> None:
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            if error.errno in errno.errorcode:
                reason += f" ({errno.errorcode[error.errno]})"
            what = "its copy"
        else:
            reason, what = error, "its figures"
        super().__init__(
            f"the report is in {out}, but MLflow could not store {what} on the study's run: "
            f"{reason}. Free some space, then run `report` (the trials, and any confirmation runs made, are kept: none is trained again)"
        )
