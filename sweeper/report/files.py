"""The report on disk: report.json, report.md, a self-contained report.html and the plots' PNG
files of one study, or one table across several studies.

A report folder is written whole or not at all: into a hidden folder beside it, then renamed into
place (an older report folder is renamed aside first and deleted last). A reader sees the old
report or the new one, never a mix; a full or read-only disk leaves the old one as it was and
raises :class:`ReportNotWritten`. Since the folder is replaced whole, ``--out`` may only name a new
or empty folder or a report folder (`check_report_folder`): a user's own files are never deleted.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path

import optuna

from sweeper.errors import UserError
from sweeper.report.method_plots import method_plots
from sweeper.report.model import Report
from sweeper.report.plots import make_plots
from sweeper.report.render import render_html, render_markdown
from sweeper.report.summary import render_summary_html, render_summary_markdown

REPORT_FILES = ("report.json", "report.md", "report.html")


class ReportNotWritten(Exception):
    """The disk refused the report folder (full, read-only, ...): nothing of the new report is
    left, an older report folder stays as it was. Exit code 1: the input was fine, the disk not."""

    exit_code = 1

    def __init__(self, out: Path, error: OSError) -> None:
        reason = error.strerror or str(error)
        if error.errno in errno.errorcode:
            reason += f" ({errno.errorcode[error.errno]})"
        super().__init__(
            f"could not write the report folder {out}: {reason}; nothing of this report was written "
            "(an earlier report there is unchanged). Free some space, or name another folder with --out"
        )


def spec_files(paths: list[Path]) -> list[Path]:
    """The spec files named, a folder standing for the *.toml files directly inside it."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.toml"))
            if not found:
                raise UserError(f"{path}: no *.toml study specs in this folder")
            files += found
        else:
            files.append(path)
    return files


def check_report_folder(out: Path, summary: bool = False) -> None:
    """Refuse, before any work, an ``--out`` the report cannot be written to or would clobber: a
    file, a path under a file, a folder that cannot be written, or a folder holding files sweeper
    did not write. A ``summary`` folder (several studies) also holds their report folders."""
    existing = next(p for p in (out, *out.absolute().parents) if p.exists() or p == Path(p.anchor))
    if existing != out and not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a folder; name a folder for the report")
    if existing == out and not out.is_dir():
        raise UserError(
            f"--out {out} is an existing file; name a folder for the report (new, or a report folder)"
        )
    foreign = (
        sorted(p.name for p in out.iterdir() if not _written_by_sweeper(p, summary)) if out.is_dir() else []
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(
            f"--out {out} holds files sweeper did not write ({shown}); the report replaces its folder "
            "whole, so name a new or empty folder, or an earlier report folder"
        )
    writable = out.absolute().parent if existing == out else existing
    if not os.access(writable, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: folder {writable} is not writable; name a folder you can write to")


def _written_by_sweeper(path: Path, summary: bool) -> bool:
    if path.is_dir():
        return summary  # a summary folder holds each study's report folder
    return path.name in REPORT_FILES or (not summary and path.suffix == ".png")


def write_report(report: Report, out: Path, study: optuna.Study | None = None) -> tuple[Report, list[Path]]:
    """Write report.json, report.md, report.html (self-contained) and the plots' PNG files into
    the folder ``out``, whole or not at all; returns the report as written (it names its plots)
    and the files."""
    plots = (make_plots(study, report.metric_name) if study is not None else []) + method_plots(report)
    report = dataclasses.replace(report, plots=tuple(plot.name for plot in plots))
    images = [(p.name, p.title, p.caption, base64.b64encode(p.png).decode("ascii")) for p in plots]
    files: dict[str, str | bytes] = {plot.name: plot.png for plot in plots}
    files["report.json"] = json.dumps(report.to_json(), indent=2, sort_keys=False)
    files["report.md"] = render_markdown(report)
    files["report.html"] = render_html(report, images)
    _write_folder(out, files)
    return report, [out / name for name in files]


def write_summary(reports: list[Report], out: Path, links: list[str]) -> list[Path]:
    """Several studies: report.json as a list, and one table with a row per dataset. The folder
    also holds the studies' report folders, so its three files are replaced, each whole."""
    files = {
        "report.json": json.dumps([report.to_json() for report in reports], indent=2),
        "report.md": render_summary_markdown(reports, links),
        "report.html": render_summary_html(reports, links),
    }
    tmp = {name: out / f".{name}.tmp-{os.getpid()}" for name in files}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            _write(tmp[name], content)
        for name, path in tmp.items():
            path.replace(out / name)
    except BaseException as exc:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ReportNotWritten(out, exc) from None
        raise
    return [out / name for name in files]


def _write_folder(out: Path, files: dict[str, str | bytes]) -> None:
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # to remove on failure
    new = out.parent / f".{out.name}.new-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        new.mkdir(parents=True)
        for name, content in files.items():
            _write(new / name, content)
        if out.exists():
            out.rename(old)
        new.rename(out)
    except BaseException as exc:
        if old.exists() and not out.exists():
            old.rename(out)  # the earlier report goes back in place
        shutil.rmtree(new, ignore_errors=True)
        for folder in made:  # innermost first
            _remove_if_empty(folder)
        if isinstance(exc, OSError):
            raise ReportNotWritten(out, exc) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
