"""The decision and its evidence: best feature-extraction trial vs best fine-tuning trial.

report.json has a fixed schema that scripts can read (see DESIGN.md):
``{"study", "decision", "feature_extraction", "fine_tuning", "gain", "gain_ci", "cost_ratio",
"matrix", "reason"}`` plus ``metric``, ``direction``, ``min_gain`` and ``evidence``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import UserError
from sweeper.spec import Spec

STRATEGIES = ("feature_extraction", "fine_tuning")
REPORT_KEYS = (
    "study",
    "decision",
    "feature_extraction",
    "fine_tuning",
    "gain",
    "gain_ci",
    "cost_ratio",
    "matrix",
    "reason",
)


def build_report(study: optuna.Study, spec: Spec, dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report as a plain dict; a study without a completed trial of either strategy is refused."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise UserError(
            f"study {spec.study.name!r} has no completed trial yet; run `python -m sweeper study "
            f"{spec.source_path}` first"
        )
    maximize = spec.study.direction == "maximize"
    arms = {s: _arm(study, completed, s, maximize) for s in STRATEGIES}
    gain = gain_of(arms["feature_extraction"], arms["fine_tuning"], maximize)
    decision, reason = decide(arms, gain, spec.study.metric, spec.decision.min_gain)
    fe, ft = arms["feature_extraction"], arms["fine_tuning"]
    cost_ratio = (
        ft["device_seconds"] / fe["device_seconds"] if fe and ft and fe["device_seconds"] > 0 else None
    )
    return {
        "study": spec.study.name,
        "decision": decision,
        "feature_extraction": fe,
        "fine_tuning": ft,
        "gain": gain,
        "gain_ci": None,  # needs confirmation runs over several seeds
        "cost_ratio": cost_ratio,
        "matrix": _matrix(dataset),
        "reason": reason,
        "metric": f"val_{spec.study.metric}",
        "direction": spec.study.direction,
        "min_gain": spec.decision.min_gain,
        "evidence": "best trial of each strategy in the search, scored on the validation split",
    }


def _arm(study, completed: list[FrozenTrial], strategy: str, maximize: bool) -> dict[str, Any] | None:
    trials = [t for t in completed if t.user_attrs.get("strategy") == strategy]
    if not trials:
        return None
    best = (max if maximize else min)(trials, key=lambda t: t.value)
    everything = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("strategy") == strategy]
    return {
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        "device_seconds": best.user_attrs.get("device_seconds", 0.0),
        "wall_seconds": best.user_attrs.get("wall_seconds", 0.0),
        "trials": len(everything),
        "arm_device_seconds": sum(t.user_attrs.get("device_seconds", 0.0) for t in everything),
    }


def gain_of(fe: dict | None, ft: dict | None, maximize: bool) -> float | None:
    """How much better fine-tuning scored (positive = fine-tuning better, whatever the direction)."""
    if fe is None or ft is None:
        return None
    return ft["value"] - fe["value"] if maximize else fe["value"] - ft["value"]


def decide(arms: dict[str, dict | None], gain: float | None, metric: str, min_gain: float) -> tuple[str, str]:
    """Fine-tuning only when it beats feature extraction by at least ``min_gain``."""
    fe, ft = arms["feature_extraction"], arms["fine_tuning"]
    if ft is None:
        return (
            "feature_extraction",
            "no fine-tuning trial completed, so nothing beats feature extraction",
        )
    if fe is None:
        return (
            "fine_tuning",
            "no feature-extraction trial completed; fine-tuning is the only measured option",
        )
    versus = f"fine-tuning (trial {ft['trial']}) vs feature extraction (trial {fe['trial']})"
    if gain >= min_gain:
        return "fine_tuning", f"{versus}: gain {gain:+.4f} {metric} ≥ min_gain {min_gain:g}"
    return (
        "feature_extraction",
        f"{versus}: gain {gain:+.4f} {metric} < min_gain {min_gain:g}; the frozen backbone is cheaper",
    )


def _matrix(dataset: dict[str, Any] | None) -> dict[str, Any] | None:
    if not dataset:
        return None
    return {"train_examples": dataset["train_examples"], "per_class_min": dataset["per_class_min"]}


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write report.json, report.md and report.html into ``out`` (each file written whole)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report.json": json.dumps(report, indent=2, sort_keys=False),
        "report.md": render_markdown(report),
        "report.html": render_html(report),
    }
    paths = []
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
        paths.append(out / name)
    return paths


def _rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    def cell(arm, key, fmt="{:.4f}"):
        return fmt.format(arm[key]) if arm and arm.get(key) is not None else "–"

    fe, ft = report["feature_extraction"], report["fine_tuning"]
    return [
        ("best trial", cell(fe, "trial", "{}"), cell(ft, "trial", "{}")),
        (report["metric"], cell(fe, "value"), cell(ft, "value")),
        (
            "device seconds (best trial)",
            cell(fe, "device_seconds", "{:.1f}"),
            cell(ft, "device_seconds", "{:.1f}"),
        ),
        ("trials run", cell(fe, "trials", "{}"), cell(ft, "trials", "{}")),
        (
            "device seconds (all trials)",
            cell(fe, "arm_device_seconds", "{:.1f}"),
            cell(ft, "arm_device_seconds", "{:.1f}"),
        ),
    ]


def _headline(report: dict[str, Any]) -> list[tuple[str, str]]:
    gain = report["gain"]
    ratio = report["cost_ratio"]
    return [
        ("decision", report["decision"].replace("_", " ")),
        ("gain", f"{gain:+.4f}" if gain is not None else "–"),
        (
            "cost ratio (fine-tuning / feature extraction)",
            f"{ratio:.1f}x" if ratio is not None else "–",
        ),
        ("reason", report["reason"]),
    ]


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# sweeper report: {report['study']}", ""]
    lines += [f"- **{k}**: {v}" for k, v in _headline(report)]
    lines += ["", "| | feature extraction | fine-tuning |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in _rows(report)]
    lines += ["", f"_{report['evidence']}._", ""]
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    head = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _headline(report))
    body = "".join(
        f"<tr><th>{esc(a)}</th><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in _rows(report)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sweeper report: {esc(report["study"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;margin:1rem 0}}th,td{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}</style>
</head><body>
<h1>sweeper report: {esc(report["study"])}</h1>
<table>{head}</table>
<table><tr><th></th><th>feature extraction</th><th>fine-tuning</th></tr>{body}</table>
<p><em>{esc(report["evidence"])}.</em></p>
</body></html>
"""
