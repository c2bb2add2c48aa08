"""The methods comparison as a plot: the metric against trainable parameters and against
device-seconds per run, one point per method (feature extraction included), the Pareto fronts
marked. Drawn from the typed `Report` (its confirmed figures), only when more than one method ran."""

from __future__ import annotations

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from sweeper.report.model import MethodPoint, Report
from sweeper.report.plots import Plot, draw_front, label_log_axis, png_bytes
from sweeper.report.text import count, strategy_name


def method_plots(report: Report) -> list[Plot]:
    """The plot of the methods comparison, or none when the study ran one method."""
    if not report.compares_methods:
        return []
    figure = Figure(figsize=(10.0, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    by_params, by_seconds = figure.subplots(1, 2, sharey=True)
    colors = {p.method: f"C{i}" for i, p in enumerate(report.methods)}
    counted = [p for p in report.methods if p.trainable_params is not None]
    cheapest = report.cheapest_method
    _panel(by_params, [(p.trainable_params, p, p.front_params) for p in counted], colors, cheapest)
    by_params.set_xlabel("trainable parameters (log)")
    _label_decades(by_params)
    _panel(by_seconds, [(p.device_seconds, p, p.front_seconds) for p in report.methods], colors, cheapest)
    label_log_axis(by_seconds)
    by_seconds.set_xlabel("device-seconds per run (log)")
    by_params.set_ylabel(report.metric)
    by_params.legend(fontsize=8)
    return [
        Plot(
            "by_method.png",
            f"{report.metric} vs cost, per fine-tuning method",
            "Each point is feature extraction or the best configuration of a method"
            + (" (test mean over the confirmation seeds)" if report.confirmed else " (its search trial)")
            + ". Black: the Pareto front (nothing cheaper scores as well). Ringed: the cheapest method "
            "within the best's 95% interval.",
            png_bytes(figure),
        )
    ]


def _panel(
    axes, points: list[tuple[float, MethodPoint, bool | None]], colors: dict, cheapest: str | None
) -> None:
    """One panel: the points at cost ``x``, the front through those flagged on it."""
    for x, point, _ in points:
        at, name = (max(x, 1e-3), point.value), strategy_name(point.method)
        axes.scatter(*at, color=colors[point.method], label=name, zorder=3)
        if point.method == cheapest:
            axes.scatter(*at, s=220, facecolors="none", edgecolors="black", zorder=2)
        axes.annotate(name, at, fontsize=8, xytext=(5, 5), textcoords="offset points")
    on = sorted((max(x, 1e-3), p.value) for x, p, flag in points if flag)
    if on:
        draw_front(axes, on)
    axes.set_xscale("log")
    axes.margins(x=0.12, y=0.1)
    axes.grid(alpha=0.3)


def _label_decades(axes) -> None:
    """Ticks at powers of ten, written short (1k, 100k, 10M): parameter counts span decades."""
    low, high = axes.get_xlim()
    ticks = [10.0**k for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)]
    ticks = [t for t in ticks if low <= t <= high]
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xticks(ticks, labels=[count(int(t)) for t in ticks])
