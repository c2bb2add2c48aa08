"""The report on disk: report.json, report.md, a self-contained report.html and the plots' PNG
files of one study, or one table across several studies."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import optuna

from sweeper.errors import UserError
from sweeper.report.model import Report
from sweeper.report.plots import make_plots
from sweeper.report.render import render_html, render_markdown
from sweeper.report.summary import render_summary_html, render_summary_markdown


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


def write_report(report: Report, out: Path, study: optuna.Study | None = None) -> tuple[Report, list[Path]]:
    """Write report.json, report.md, report.html (self-contained) and the plots' PNG files;
    returns the report as written (it names its plots) and the files."""
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(study, report.metric_name) if study is not None else []
    report = dataclasses.replace(report, plots=tuple(plot.name for plot in plots))
    images = [(p.name, p.title, p.caption, base64.b64encode(p.png).decode("ascii")) for p in plots]
    files: dict[str, str | bytes] = {plot.name: plot.png for plot in plots}
    files["report.json"] = json.dumps(report.to_json(), indent=2, sort_keys=False)
    files["report.md"] = render_markdown(report)
    files["report.html"] = render_html(report, images)
    return report, [_write_whole(out / name, content) for name, content in files.items()]


def write_summary(reports: list[Report], out: Path, links: list[str]) -> list[Path]:
    """Several studies: report.json as a list, and one table with a row per dataset."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report.json": json.dumps([report.to_json() for report in reports], indent=2),
        "report.md": render_summary_markdown(reports, links),
        "report.html": render_summary_html(reports, links),
    }
    return [_write_whole(out / name, content) for name, content in files.items()]


def _write_whole(path: Path, content: str | bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)
    return path
