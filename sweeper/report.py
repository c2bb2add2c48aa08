"""The decision and its evidence: the best feature-extraction config vs the best fine-tuning config.

After a search alone the comparison is provisional (each arm's best validation trial, one run
each, biased upwards by the selection). `confirm.confirm` re-trains both with several seeds and
scores them on the held-out test split; then the gain has an interval and `decision.decide`
applies the rule. report.json has a fixed schema that scripts can read (see DESIGN.md):
``{"study", "decision", "feature_extraction", "fine_tuning", "gain", "gain_ci", "cost_ratio",
"matrix", "forgetting", "reason"}`` plus the evidence behind them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.confirm import (
    PROBE_ATTR,
    STRATEGIES,
    RuntimeFactory,
    Say,
    best_trials,
    confirm,
    frozen_probe,
    unpack,
)
from sweeper.decision import (
    SIMILAR_PROBE,
    SMALL_PER_CLASS,
    Gain,
    decide,
    normalised_probe,
    paired_t_interval,
    read_matrix,
    test_example_interval,
)
from sweeper.errors import UserError
from sweeper.forgetting import summarize_forgetting
from sweeper.records import seconds_of, strategy_of
from sweeper.render import render_html, render_markdown, render_summary_html, render_summary_markdown
from sweeper.spec import Spec

REPORT_KEYS = (
    "study",
    "decision",
    "feature_extraction",
    "fine_tuning",
    "gain",
    "gain_ci",
    "cost_ratio",
    "matrix",
    "forgetting",
    "reason",
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


def describe_dataset(labels: list[int], classes: list[str], splits) -> dict[str, Any]:
    """Split sizes and training examples per class: the size axis of the decision matrix."""
    counts = np.bincount(np.asarray(labels)[splits.train], minlength=len(classes))
    return {
        "train_examples": int(counts.sum()),
        "val_examples": len(splits.val),
        "test_examples": len(splits.test),
        "per_class": {name: int(n) for name, n in zip(classes, counts, strict=True)},
        "per_class_min": int(counts.min()),
        "per_class_mean": float(counts.mean()),
    }


def build_report(
    study: optuna.Study,
    spec: Spec,
    dataset: dict[str, Any] | None = None,
    confirmation: dict[str, list[dict]] | None = None,
    probe: dict | None = None,
    test_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """The report as a plain dict; a study without a completed trial is refused.

    Args:
        dataset: `describe_dataset` of the study's data (the matrix needs it).
        confirmation: `confirm.confirm` runs per arm; without it the report is search-only.
        probe: `confirm.frozen_probe` (the matrix's similarity axis).
        test_labels: labels of the test split, in order (the bootstrap over test examples).
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError(
            f"study {spec.study.name!r} has no completed trial yet; run `python -m sweeper study "
            f"{spec.source_path}` first"
        )
    metric = spec.study.metric
    best = best_trials(study)
    confirmation = {s: runs for s, runs in (confirmation or {}).items() if runs}
    confirmed = all(s in confirmation for s in STRATEGIES)
    arms = {s: _arm(study, best[s], confirmation.get(s) if confirmed else None, metric) for s in STRATEGIES}
    missing = next((s for s in STRATEGIES if arms[s] is None), None)
    gain = None if missing else _gain(arms, confirmation if confirmed else None, spec, test_labels)
    decision, reason = decide(gain, missing, spec.decision.min_gain, metric)
    fe, ft = arms["feature_extraction"], arms["fine_tuning"]
    ratio = ft["device_seconds"] / fe["device_seconds"] if fe and ft and fe["device_seconds"] > 0 else None
    return {
        "study": spec.study.name,
        "decision": decision,
        "confirmed": confirmed,
        "feature_extraction": fe,
        "fine_tuning": ft,
        "gain": gain.value if gain else None,
        "gain_ci": list(gain.ci) if gain and gain.seed_ci else None,
        "gain_ci_seeds": list(gain.seed_ci) if gain and gain.seed_ci else None,
        "gain_ci_test_examples": list(gain.test_ci) if gain and gain.test_ci else None,
        "confidence": 0.95,
        "cost_ratio": ratio,
        "gain_per_device_hour": _gain_per_device_hour(gain, fe, ft),
        "cost": _cost(study, confirmation),
        "matrix": _matrix(dataset, probe, decision, gain),
        "forgetting": summarize_forgetting(study, best["fine_tuning"], confirmation.get("fine_tuning")),
        "reason": reason,
        "metric": f"{'test' if confirmed else 'val'}_{metric}",
        "direction": spec.study.direction,
        "min_gain": spec.decision.min_gain,
        "evidence": _evidence(confirmed, confirmation, dataset),
    }


def _arm(study, best: FrozenTrial | None, runs: list[dict] | None, metric: str) -> dict[str, Any] | None:
    if best is None:
        return None
    strategy = strategy_of(best)
    everything = [t for t in study.get_trials(deepcopy=False) if strategy_of(t) == strategy]
    arm = {
        "trial": best.number,
        "params": best.params,
        "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        "search_value": best.value,
        "value": best.value,
        "device_seconds": seconds_of(best, "device"),
        "wall_seconds": seconds_of(best, "wall"),
        "trials": len(everything),
        "arm_device_seconds": sum(seconds_of(t, "device") for t in everything),
        "arm_wall_seconds": sum(seconds_of(t, "wall") for t in everything),
    }
    if runs:
        seed_values = [run["test"][metric] for run in runs]
        arm.update(
            value=float(np.mean(seed_values)),
            seed_values=seed_values,
            seed_std=float(np.std(seed_values, ddof=1)) if len(runs) > 1 else None,
            test={k: float(np.mean([run["test"][k] for run in runs])) for k in runs[0]["test"]},
            confirm_val_value=float(np.mean([run["val"][metric] for run in runs])),
        )
        # one run from scratch: the prefix states once (the arm's first seed computed them), then training
        prefix = max(run["prefix_seconds"] for run in runs)
        arm["prefix_seconds"] = prefix
        arm["train_seconds"] = float(np.mean([run["train_seconds"] for run in runs]))
        arm["device_seconds"] = prefix + arm["train_seconds"]
        arm["wall_seconds"] = prefix + float(np.mean([r["wall_seconds"] - r["prefix_seconds"] for r in runs]))
    return arm


def _gain(arms, confirmation, spec: Spec, test_labels) -> Gain:
    sign = 1.0 if spec.study.direction == "maximize" else -1.0
    if confirmation is None:
        return Gain(sign * (arms["fine_tuning"]["value"] - arms["feature_extraction"]["value"]))
    fe, ft = confirmation["feature_extraction"], confirmation["fine_tuning"]
    differences = [
        sign * (b["test"][spec.study.metric] - a["test"][spec.study.metric])
        for a, b in zip(fe, ft, strict=True)
    ]
    return Gain(
        float(np.mean(differences)),
        seeds=len(differences),
        seed_ci=paired_t_interval(differences),
        test_ci=_test_interval(fe, ft, spec.study.metric, sign, test_labels),
    )


def _test_interval(fe_runs, ft_runs, metric: str, sign: float, labels) -> tuple[float, float] | None:
    if labels is None:
        return None

    def stacked(runs, key):
        return np.stack([unpack(run[key]) for run in runs])

    return test_example_interval(
        metric,
        sign,
        np.asarray(labels),
        stacked(fe_runs, "predictions"),
        stacked(ft_runs, "predictions"),
        stacked(fe_runs, "losses"),
        stacked(ft_runs, "losses"),
    )


def _gain_per_device_hour(gain: Gain | None, fe, ft) -> float | None:
    if gain is None or not fe or not ft or ft["device_seconds"] <= fe["device_seconds"]:
        return None
    return gain.value / ((ft["device_seconds"] - fe["device_seconds"]) / 3600)


def _cost(study: optuna.Study, confirmation: dict[str, list[dict]]) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    runs = [run for arm in confirmation.values() for run in arm]
    return {
        "study": {
            "trials": len(trials),
            "device_seconds": sum(seconds_of(t, "device") for t in trials),
            "wall_seconds": sum(seconds_of(t, "wall") for t in trials),
            "elapsed_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
        },
        "confirmation": {
            "runs": len(runs),
            "device_seconds": sum(run["device_seconds"] for run in runs),
            "wall_seconds": sum(run["wall_seconds"] for run in runs),
        },
    }


def _matrix(dataset, probe, decision: str, gain: Gain | None) -> dict[str, Any] | None:
    if not dataset:
        return None
    score = normalised_probe(probe["balanced_accuracy"], probe["num_classes"]) if probe else None
    return {
        "train_examples": dataset["train_examples"],
        "per_class": dataset.get("per_class"),
        "per_class_min": dataset["per_class_min"],
        "per_class_mean": dataset.get("per_class_mean", dataset["per_class_min"]),
        "probe_balanced_accuracy": probe["balanced_accuracy"] if probe else None,
        "probe_score": score,
        **read_matrix(dataset.get("per_class_mean", dataset["per_class_min"]), score, decision, gain),
        "thresholds": {"small_per_class_below": SMALL_PER_CLASS, "similar_probe_score_from": SIMILAR_PROBE},
    }


def _evidence(confirmed: bool, confirmation: dict, dataset: dict | None) -> str:
    if not confirmed:
        return (
            "search only: the best trial of each strategy, scored on the validation split that "
            "picked it (biased upwards); `python -m sweeper report` confirms on the test split"
        )
    seeds = len(confirmation["fine_tuning"])
    examples = f" ({dataset['test_examples']} examples)" if dataset else ""
    return (
        f"the best trial of each strategy, re-trained with {seeds} paired seeds on the training "
        f"split and scored on the held-out test split{examples}, which the search never saw"
    )


def report_study(
    study: optuna.Study,
    spec: Spec,
    raw_labels: list[int],
    classes: list[str],
    splits,
    runtime: RuntimeFactory | None = None,
    train_confirmations: bool = True,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    """Gather the evidence and build the report.

    ``runtime()`` gives a study runtime (model and data loaded) for the probe and the confirmation
    runs; without it only what the study has cached is used. With ``train_confirmations`` false,
    confirmation runs are read from the study's cache but never trained (the `study` command).
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return build_report(study, spec)  # refuses, saying what to run
    probe = study.user_attrs.get(PROBE_ATTR)
    if runtime is not None:
        probe = frozen_probe(study, runtime)
    confirmation = confirm(study, spec, runtime, say, train=train_confirmations and runtime is not None)
    return build_report(
        study,
        spec,
        describe_dataset(raw_labels, classes, splits),
        confirmation,
        probe,
        test_labels=np.asarray(raw_labels)[splits.test],
    )


def write_report(report: dict[str, Any], out: Path, study: optuna.Study | None = None) -> list[Path]:
    """Write report.json, report.md, report.html (self-contained) and the plots' PNG files."""
    from sweeper.plots import make_plots

    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(study, report["metric"].split("_", 1)[1]) if study is not None else []
    report["plots"] = [plot.name for plot in plots]
    images = [(p.name, p.title, p.caption, base64.b64encode(p.png).decode("ascii")) for p in plots]
    files: dict[str, str | bytes] = {plot.name: plot.png for plot in plots}
    files["report.json"] = json.dumps(report, indent=2, sort_keys=False)
    files["report.md"] = render_markdown(report)
    files["report.html"] = render_html(report, images)
    return [_write_whole(out / name, content) for name, content in files.items()]


def write_summary(reports: list[dict[str, Any]], out: Path, links: list[str]) -> list[Path]:
    """Several studies: report.json as a list, and one table with a row per dataset."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report.json": json.dumps(reports, indent=2),
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
