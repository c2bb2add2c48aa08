"""The report's plots, drawn from the study alone (trial values, intermediate values, params and
user attrs): PNG bytes from matplotlib's Agg canvas, no global pyplot state, nothing shown.

Each plot is a `Plot(name, title, caption, png)`; `make_plots` returns those the study can fill.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from optuna.trial import FrozenTrial, TrialState

from sweeper.records import seconds_of, stage_starts_of, strategy_of

COLORS = {"feature_extraction": "#1f77b4", "fine_tuning": "#d62728"}
LABELS = {"feature_extraction": "feature extraction", "fine_tuning": "fine-tuning"}
TOP_TRIALS = 5
# fANOVA fits a random forest to the completed trials: with fewer it only describes noise
MIN_TRIALS_FOR_IMPORTANCES = 4


@dataclass(frozen=True)
class Plot:
    name: str  # file name, e.g. "curves.png"
    title: str
    caption: str
    png: bytes


def make_plots(study: optuna.Study, metric: str) -> list[Plot]:
    """Every plot the study has data for, in reading order."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return []
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    label = f"val_{metric}"
    plots = [
        _curves(completed, label, maximize),
        _by_unfrozen_blocks(study, completed, label),
        _by_lr_ratio(completed, label),
        _by_compute(completed, label, maximize),
        _importances(study),
    ]
    return [plot for plot in plots if plot is not None]


def _figure(width: float = 7.0, height: float = 3.6) -> tuple[Figure, object]:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _scored(figure: Figure, axes, xlabel: str, label: str, name: str, title: str, caption: str) -> Plot:
    """A plot of the metric (``label``, on the y axis): the labels, legend and grid every one of
    them has, then its PNG."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(label)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return Plot(name, title, caption, png_bytes(figure))


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _curves(completed: list[FrozenTrial], label: str, maximize: bool) -> Plot:
    figure, axes = _figure()
    ranked = sorted(completed, key=lambda t: t.value, reverse=maximize)[:TOP_TRIALS]
    colors = [f"C{i}" for i in range(len(ranked))]
    for trial, color in zip(ranked, colors, strict=True):
        steps = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[s] for s in steps]
        blocks = trial.params.get("unfrozen_blocks", 0)
        name = f"trial {trial.number} ({LABELS[strategy_of(trial)]}, unfrozen_blocks={blocks})"
        axes.plot([s + 1 for s in steps], values, marker="o", color=color, label=name)
        for start in stage_starts_of(trial)[1:]:
            axes.axvline(start + 0.5, color=color, linestyle=":", alpha=0.7)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _scored(
        figure,
        axes,
        "epoch (numbered across stages)",
        label,
        "curves.png",
        f"{label} per epoch, top {len(ranked)} trials",
        "Dotted lines mark where a stage begins (the next blocks unfreeze), in the trial's colour.",
    )


def _by_unfrozen_blocks(study: optuna.Study, completed: list[FrozenTrial], label: str) -> Plot:
    figure, axes = _figure()
    for i, trial in enumerate(completed):
        jitter = ((i * 7919) % 11 - 5) / 40
        blocks = trial.params.get("unfrozen_blocks", 0)
        axes.scatter(blocks + jitter, trial.value, color=COLORS[strategy_of(trial)], alpha=0.8)
    best: dict[int, float] = {}
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    for trial in completed:
        blocks = trial.params.get("unfrozen_blocks", 0)
        best[blocks] = pick(best.get(blocks, trial.value), trial.value)
    xs = sorted(best)
    axes.plot(xs, [best[x] for x in xs], color="grey", linestyle="--", label="best per block count")
    pruned = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values
    ]
    if pruned:
        axes.scatter(
            [t.params.get("unfrozen_blocks", 0) + 0.15 for t in pruned],
            [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
            facecolors="none",
            edgecolors="grey",
            label="pruned (value when stopped)",
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _scored(
        figure,
        axes,
        "unfrozen_blocks (0 = feature extraction)",
        label,
        "by_unfrozen_blocks.png",
        f"{label} vs unfrozen_blocks",
        f"Filled: the {len(completed)} completed trials, coloured by strategy. Hollow: the "
        f"{len(pruned)} pruned trials at the epoch they were stopped (fewer epochs: not comparable).",
    )


def _by_lr_ratio(completed: list[FrozenTrial], label: str) -> Plot | None:
    tuned = [t for t in completed if t.params.get("lr_ratio")]
    if not tuned:
        return None
    figure, axes = _figure()
    axes.axvspan(0.01, 0.1, color="green", alpha=0.08, label="practice: backbone 10x-100x slower")
    points = axes.scatter(
        [t.params["lr_ratio"] for t in tuned],
        [t.value for t in tuned],
        c=[t.params["unfrozen_blocks"] for t in tuned],
        cmap="viridis",
    )
    figure.colorbar(points, ax=axes, label="unfrozen_blocks", ticks=MaxNLocator(integer=True))
    axes.set_xscale("log")
    return _scored(
        figure,
        axes,
        "lr_ratio (backbone LR / head LR)",
        label,
        "by_lr_ratio.png",
        f"{label} vs lr_ratio (fine-tuning trials)",
        "Each point is a completed fine-tuning trial, coloured by how many blocks it unfroze.",
    )


def _by_compute(completed: list[FrozenTrial], label: str, maximize: bool) -> Plot:
    figure, axes = _figure()
    for strategy, color in COLORS.items():
        trials = [t for t in completed if strategy_of(t) == strategy]
        if trials:
            xs = [max(seconds_of(t, "device"), 1e-3) for t in trials]
            axes.scatter(xs, [t.value for t in trials], color=color, label=LABELS[strategy])
    front = pareto_front([(max(seconds_of(t, "device"), 1e-3), t.value) for t in completed], maximize)
    draw_front(axes, front)
    axes.set_xscale("log")
    label_log_axis(axes)
    return _scored(
        figure,
        axes,
        "device seconds per trial (log)",
        label,
        "by_compute.png",
        f"{label} vs compute",
        "The Pareto front joins the trials that no other trial beats on both score and compute.",
    )


def draw_front(axes, front: list[tuple[float, float]]) -> None:
    """The Pareto front, its points sorted by x, as a step line."""
    axes.step(
        [x for x, _ in front],
        [y for _, y in front],
        where="post",
        color="black",
        alpha=0.6,
        label="Pareto front",
    )


def label_log_axis(axes) -> None:
    """Ticks at 1, 2 and 5 times powers of ten, written as plain numbers."""
    low, high = axes.get_xlim()
    ticks = [
        m * 10.0**k
        for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for m in (1, 2, 5)
        if low <= m * 10.0**k <= high
    ]
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xticks(ticks, labels=[f"{tick:g}" for tick in ticks])


def pareto_front(points: list[tuple[float, float]], maximize: bool) -> list[tuple[float, float]]:
    """(cost, score) points not dominated by a cheaper-or-equal one with a better-or-equal score,
    by increasing cost."""
    front: list[tuple[float, float]] = []
    best = -math.inf
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1] if maximize else p[1])):
        value = score if maximize else -score
        if value > best:
            front.append((cost, score))
            best = value
    return front


def _importances(study: optuna.Study) -> Plot:
    figure, axes = _figure(height=2.8)
    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    try:
        if completed < MIN_TRIALS_FOR_IMPORTANCES:
            raise ValueError(f"{completed} completed, fANOVA needs {MIN_TRIALS_FOR_IMPORTANCES}")
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:  # too few trials, or no parameter varies
        importances, why = {}, str(exc)
    else:
        why = "" if importances else "no parameter varies across the completed trials"
    if importances:
        names = list(importances)[::-1]
        axes.barh(names, [importances[n] for n in names], color="#555")
        axes.set_xlabel("importance (fANOVA, share of the variance of the objective)")
        caption = (
            "Computed over the completed trials and the parameters they all share "
            "(lr_ratio, stage_epochs and blocks_per_stage exist only for fine-tuning trials)."
        )
    else:
        axes.text(0.5, 0.5, "not enough completed trials for parameter importances", ha="center", va="center")
        axes.set_axis_off()
        caption = f"Parameter importances need more completed trials: {why}"
    return Plot("importances.png", "parameter importances", caption, png_bytes(figure))
