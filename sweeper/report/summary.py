"""The table across several studies: one row per study, as Markdown, HTML and terminal text."""

from __future__ import annotations

import html

from sweeper.report.model import Report
from sweeper.report.render import interval_text, number, page, strategy_name


def summary_rows(reports: list[Report]) -> list[tuple[str, ...]]:
    rows = []
    for r in reports:
        rows.append(
            (
                r.study,
                _decision(r),
                f"{number(r.gain, '{:+.4f}')} {interval_text(r.gain_ci)}",
                number(r.cost_ratio, "{:.1f}x"),
                (r.matrix.quadrant if r.matrix else None) or "–",
                r.matrix.agreement if r.matrix else "unknown",
                (f"test, {r.seeds} seeds" + ("" if r.conclusive else ", inconclusive"))
                if r.confirmed
                else "validation, search only",
            )
        )
    return rows


def _decision(report: Report) -> str:
    """The decision, with the method where fine-tuning was picked among several."""
    arm = report.fine_tuning
    if report.decision == "fine_tuning" and report.compares_methods and arm and arm.method:
        return f"{strategy_name(report.decision)} ({arm.method})"
    return strategy_name(report.decision)


SUMMARY_HEADER = ("study", "decision", "gain [95% interval]", "cost ratio", "quadrant", "matrix", "evidence")


def render_summary_markdown(reports: list[Report], links: list[str]) -> str:
    lines = ["# sweeper: one row per study", "", "| " + " | ".join(SUMMARY_HEADER) + " |"]
    lines.append("|" + "---|" * len(SUMMARY_HEADER))
    for row, link in zip(summary_rows(reports), links, strict=True):
        lines.append(f"| [{row[0]}]({link}) | " + " | ".join(row[1:]) + " |")
    return "\n".join(lines) + "\n"


def render_summary_html(reports: list[Report], links: list[str]) -> str:
    esc = html.escape
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in SUMMARY_HEADER) + "</tr>"
    body = "".join(
        f"<tr><th><a href='{esc(link)}'>{esc(row[0])}</a></th>"
        + "".join(f"<td>{esc(c)}</td>" for c in row[1:])
        + "</tr>"
        for row, link in zip(summary_rows(reports), links, strict=True)
    )
    return page(
        "sweeper: one row per study", f"<h1>sweeper: one row per study</h1><table>{head}{body}</table>"
    )


def render_summary_text(reports: list[Report]) -> str:
    """The table across studies for a terminal: fixed-width columns."""
    rows = [SUMMARY_HEADER, *summary_rows(reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(SUMMARY_HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
