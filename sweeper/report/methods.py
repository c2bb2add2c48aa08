"""The report's section on fine-tuning methods: feature extraction and the best configuration of
each method, as a table of the metric against its cost, and the line naming the cheapest method
within the best's interval. Shown when more than one method ran (`Report.compares_methods`);
reads the typed `Report` only."""

from __future__ import annotations

from sweeper.report.model import MethodPoint, Report
from sweeper.report.text import count, interval_text, number, strategy_name

FRONT_NOTE = (
    "Pareto front: no other row has as few trainable parameters (or device-seconds per run) and a "
    "metric as good, while being better on one of the two. The gain is over feature extraction; "
    "within: the gain lies in the best method's 95% interval."
)


def method_header(report: Report) -> tuple[str, ...]:
    return (
        "method",
        "trial",
        report.metric,
        "gain [95% interval]",
        "within the best's interval",
        "trainable parameters",
        "shipped size",
        "device-seconds per run",
        "trials",
        "Pareto front",
    )


def method_rows(report: Report) -> list[tuple[str, ...]]:
    return [_row(point, point.method == report.cheapest_method) for point in report.methods]


def _row(point: MethodPoint, cheapest: bool) -> tuple[str, ...]:
    notes = [note for note, on in (("picked", point.picked), ("cheapest", cheapest)) if on]
    name = strategy_name(point.method) + (f" ({', '.join(notes)})" if notes else "")
    fronts = [
        axis for axis, on in (("parameters", point.front_params), ("seconds", point.front_seconds)) if on
    ]
    tuned = point.method != "feature_extraction"
    return (
        name,
        str(point.trial),
        number(point.value),
        f"{number(point.gain, '{:+.4f}')} {interval_text(point.gain_ci)}" if tuned else "–",
        {True: "yes", False: "no", None: "–"}[point.within_best],
        count(point.trainable_params),
        _bytes(point.ship_bytes),
        number(point.device_seconds, "{:.1f}"),
        str(point.trials),
        ", ".join(fronts) or "–",
    )


def _bytes(size: int | None) -> str:
    return "–" if size is None else f"{count(size)}B"


def cheapest_line(report: Report) -> str:
    """The line that names the cheapest method within the best's interval, or says why none is."""
    name = report.cheapest_method
    return f"cheapest method within the best's interval: {name or '–'} ({report.cheapest_reason or '–'})"


def not_completed_lines(report: Report) -> list[str]:
    """A line per method that ran without completing a trial: nothing of it was confirmed."""
    return [
        f"{method}: {trials} trial{'s' if trials != 1 else ''}, none completed (pruned or failed), so "
        'no configuration of it to confirm; give the study more trials, or set [budget] pruner = "none"'
        for method, trials in report.methods_not_completed
    ]


def methods_markdown(report: Report) -> list[str]:
    """The section in Markdown; nothing when the study ran one method."""
    if not report.compares_methods:
        return []
    header = method_header(report)
    lines = ["## Fine-tuning methods", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in method_rows(report)]
    lines += ["", f"**{cheapest_line(report)}**", ""]
    lines += [f"- {line}" for line in not_completed_lines(report)] + (
        [""] if report.methods_not_completed else []
    )
    return lines + [f"_{FRONT_NOTE}_", ""]
