"""The report as Markdown and as one self-contained HTML page (plots embedded as data URIs), and
the table across several studies. Reads the typed `Report` only; computes nothing."""

from __future__ import annotations

import html

from sweeper.report.methods import (
    FRONT_NOTE,
    cheapest_line,
    method_header,
    method_rows,
    methods_markdown,
    not_completed_lines,
)
from sweeper.report.model import ArmConfirmation, Report
from sweeper.report.screen import screen_html, screen_markdown
from sweeper.report.text import interval_text, number, strategy_name

ImageRow = tuple[str, str, str, str]  # (file name, title, caption, base64 PNG)

CSS = """body{font-family:system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.6rem 0 1.2rem}th,td{border:1px solid #ccc;padding:.3rem .6rem;
text-align:left;vertical-align:top}th{background:#f6f6f6}.decision{font-size:1.6rem;font-weight:600}
figure{margin:1.2rem 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9rem}
.note{color:#555;font-size:.9rem}"""


def headline(report: Report) -> list[tuple[str, str]]:
    matrix = report.matrix
    cka = report.forgetting.final_cka if report.forgetting else None
    quadrant = f"{matrix.quadrant or '–'}: {matrix.advice or '–'} " if matrix else "–: – "
    return [
        ("decision", strategy_name(report.decision)),
        ("reason", report.reason),
        (
            f"gain of fine-tuning ({report.metric})",
            f"{number(report.gain, '{:+.4f}')}, 95% interval {interval_text(report.gain_ci)}; min_gain {report.min_gain:g}",
        ),
        ("confirmation", _confirmation(report)),
        (
            "cost ratio (fine-tuning / feature extraction, device-seconds per run)",
            number(report.cost_ratio, "{:.1f}x"),
        ),
        ("gain per extra device-hour", number(report.gain_per_device_hour, "{:+.3f}")),
        ("decision matrix", f"{quadrant}(measurement {matrix.agreement if matrix else 'unknown'})"),
        ("forgetting (linear CKA, pretrained vs fine-tuned features; 1 = unchanged)", number(cka)),
    ]


def _confirmation(report: Report) -> str:
    if not report.seeds:
        return "none yet (search only)"
    level = number(report.decision_confidence, "{:.1%}")
    conclusive = "conclusive" if report.conclusive else "inconclusive"
    return (
        f"{report.seeds} paired seeds per arm, {conclusive}; stopped: {report.stopped or '–'}; "
        f"decision interval {interval_text(report.decision_interval)} at {level} (corrected for repeated looks); "
        f"{number(report.seed_share, '{:.0%}')} of the variance from seeds, the rest from test examples"
    )


def incomplete(report: Report) -> str | None:
    """The warning at the top of a report made while its study runs."""
    return (
        None
        if report.complete
        else f"the study is not finished ({report.trials_note}): this report may change"
    )


def dropped_note(report: Report) -> str | None:
    """The line that says the study ran without some of the data's examples."""
    n = report.dropped_examples
    if not n:
        return None
    return (
        f'{n} example{"s" if n > 1 else ""} of the data left out under [data] on_missing = "drop" '
        "(an empty text or label, an image that does not decode); the study ran on the rest"
    )


def _stages(arm) -> str:
    stages = arm.stages if arm else None
    return ", ".join(f"{s['stage']} {s['outcome'].replace('_', ' ')}" for s in stages) if stages else "–"


def arm_rows(report: Report) -> list[tuple[str, str, str]]:
    fe, ft = report.feature_extraction, report.fine_tuning
    fe_confirmed = fe.confirmation if fe else None
    ft_confirmed = ft.confirmation if ft else None
    metric = report.metric_name

    def row(label, key, fmt="{:.4f}"):
        return (label, number(getattr(fe, key, None), fmt), number(getattr(ft, key, None), fmt))

    def confirmed_row(label, key, fmt="{:.4f}"):
        return (
            label,
            number(getattr(fe_confirmed, key, None), fmt),
            number(getattr(ft_confirmed, key, None), fmt),
        )

    rows = [
        row("best trial of the search", "trial", "{}"),
        ("its params", _params(fe.params if fe else None), _params(ft.params if ft else None)),
        row(f"val_{metric} in the search (selected on it)", "search_value"),
        ("its stages (kept or rolled back)", _stages(fe), _stages(ft)),
    ]
    if report.confirmed:
        rows += [
            confirmed_row(f"val_{metric}, confirmation runs (mean)", "confirm_val_value"),
            (f"test_{metric} per seed", _seeds(fe_confirmed), _seeds(ft_confirmed)),
            row(f"test_{metric}, mean", "value"),
            confirmed_row("standard deviation over seeds", "seed_std"),
        ]
        for key in ("accuracy", "macro_f1", "loss"):
            if key != metric:
                rows.append((f"test_{key} (mean)", _test(fe_confirmed, key), _test(ft_confirmed, key)))
        rows += [
            row("device-seconds per run from scratch", "device_seconds", "{:.1f}"),
            confirmed_row("  of which frozen-prefix states", "prefix_seconds", "{:.1f}"),
            row("wall-seconds per run from scratch", "wall_seconds", "{:.1f}"),
        ]
    else:
        rows.append(row("device-seconds (best trial)", "device_seconds", "{:.1f}"))
    rows += [
        row("trials in the search", "trials", "{}"),
        row("device-seconds, all its trials", "arm_device_seconds", "{:.1f}"),
        row("wall-seconds, all its trials", "arm_wall_seconds", "{:.1f}"),
    ]
    return rows


def _params(params: dict | None) -> str:
    if not params:
        return "–"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _seeds(confirmation: ArmConfirmation | None) -> str:
    values = confirmation.seed_values if confirmation else []
    return ", ".join(f"{v:.4f}" for v in values) or "–"


def _test(confirmation: ArmConfirmation | None, key: str) -> str:
    return number(confirmation.test.get(key) if confirmation else None)


def matrix_rows(report: Report) -> list[tuple[str, str]]:
    m = report.matrix
    if not m:
        return []
    t = m.thresholds
    per_class = ", ".join(f"{k} {v}" for k, v in (m.per_class or {}).items())
    return [
        ("training examples", f"{m.train_examples} ({per_class})"),
        (
            "size",
            f"{m.size}: {m.per_class_mean:.0f} per class on average (small below {t['small_per_class_below']})",
        ),
        ("linear probe on frozen features", f"balanced accuracy {number(m.probe_balanced_accuracy)} on val"),
        (
            "similarity",
            f"{m.similarity}: probe score {number(m.probe_score, '{:.3f}')} "
            f"(0 = chance, 1 = perfect; similar from {t['similar_probe_score_from']})"
            if m.similarity
            else "not measured yet: the report that confirms (see the evidence line) runs the probe",
        ),
        ("quadrant", m.quadrant or "–"),
        ("the rule of thumb advises", m.advice or "–"),
        ("measured decision", strategy_name(report.decision)),
        ("agreement", m.agreement),
    ]


def forgetting_rows(report: Report) -> list[tuple[str, str, str, str]]:
    figures = report.forgetting
    if figures is None:
        return []
    rows = []
    for entry in figures.per_stage:
        changes = entry["weight_change"]
        detail = ", ".join(f"block {b}: {v:.4f}" for b, v in changes.items())
        rows.append(
            (
                f"trial {figures.trial}, stage {entry['stage']}",
                number(entry["cka"]),
                number(_avg(changes)),
                detail,
            )
        )
    confirmed = figures.confirmed
    if confirmed:
        detail = ", ".join(f"block {b}: {v:.4f}" for b, v in confirmed.weight_change.items())
        seeds = ", ".join(f"{v:.4f}" for v in confirmed.cka_seeds)
        rows.append(
            (
                f"confirmation runs (CKA per seed: {seeds})",
                number(confirmed.cka),
                number(confirmed.weight_change_mean),
                detail,
            )
        )
    return rows


def _avg(values: dict) -> float:
    return sum(values.values()) / len(values) if values else float("nan")


def cost_rows(report: Report) -> list[tuple[str, str]]:
    study, confirmation = report.cost.study, report.cost.confirmation
    return [
        ("study: trials", str(study.trials)),
        ("study: device-seconds (sum over trials)", number(study.device_seconds, "{:.1f}")),
        ("study: wall-seconds (sum over trials)", number(study.wall_seconds, "{:.1f}")),
        ("study: elapsed (first trial start to last trial end)", number(study.elapsed_seconds, "{:.1f} s")),
        ("confirmation: runs", str(confirmation.runs)),
        ("confirmation: device-seconds", number(confirmation.device_seconds, "{:.1f}")),
    ]


def render_markdown(report: Report) -> str:
    lines = [f"# sweeper report: {report.study}", "", *screen_markdown(report.screen)]
    lines += [f"> **incomplete**: {incomplete(report)}", ""] if incomplete(report) else []
    lines += [f"- **{k}**: {v}" for k, v in headline(report)]
    lines += ["", f"_{dropped_note(report)}._"] if dropped_note(report) else []
    lines += [
        "",
        "## Feature extraction vs fine-tuning",
        "",
        "| | feature extraction | fine-tuning |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in arm_rows(report)]
    lines += ["", f"_{report.evidence}._", ""] + methods_markdown(report)
    if matrix_rows(report):
        lines += ["## Decision matrix", "", "| | |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in matrix_rows(report)] + [""]
    if forgetting_rows(report):
        lines += [
            "## Forgetting",
            "",
            "| | linear CKA | weight change (mean) | per block |",
            "|---|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in forgetting_rows(report)] + [""]
    lines += ["## Cost", "", "| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in cost_rows(report)] + [""]
    for name in report.plots:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def _table(rows, header: tuple[str, ...] | None = None) -> str:
    esc = html.escape
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr><th>" + esc(row[0]) + "</th>" + "".join(f"<td>{esc(c)}</td>" for c in row[1:]) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def render_html(report: Report, images: list[ImageRow]) -> str:
    esc = html.escape
    parts = [
        f"<h1>sweeper report: {esc(report.study)}</h1>",
        screen_html(report.screen),
        f"<p class='note'><b>incomplete</b>: {esc(incomplete(report))}</p>" if incomplete(report) else "",
        f"<p class='decision'>decision: {esc(strategy_name(report.decision))}</p>",
        _table(headline(report)[1:]),
        f"<p class='note'>{esc(dropped_note(report))}.</p>" if dropped_note(report) else "",
        "<h2>Feature extraction vs fine-tuning</h2>",
        _table(arm_rows(report), ("", "feature extraction", "fine-tuning")),
        f"<p class='note'>{esc(report.evidence)}.</p>",
    ]
    if report.compares_methods:
        parts += [
            "<h2>Fine-tuning methods</h2>",
            _table(method_rows(report), method_header(report)),
            f"<p><b>{esc(cheapest_line(report))}</b></p>",
            *(f"<p>{esc(line)}</p>" for line in not_completed_lines(report)),
            f"<p class='note'>{esc(FRONT_NOTE)}</p>",
        ]
    if matrix_rows(report):
        parts += ["<h2>Decision matrix</h2>", _table(matrix_rows(report))]
    if forgetting_rows(report):
        parts += [
            "<h2>Forgetting</h2>",
            _table(forgetting_rows(report), ("", "linear CKA", "weight change (mean)", "per block")),
            "<p class='note'>CKA compares pretrained and fine-tuned pooled features on the validation "
            "split (1 = same representation); weight change is ||w − w0|| / ||w0|| per block.</p>",
        ]
    parts += ["<h2>Cost</h2>", _table(cost_rows(report)), "<h2>Plots</h2>"]
    for name, title, caption, data in images:
        parts.append(
            f"<figure><img src='data:image/png;base64,{data}' alt='{esc(title)}' data-file='{esc(name)}'>"
            f"<figcaption><b>{esc(title)}.</b> {esc(caption)}</figcaption></figure>"
        )
    return page(f"sweeper report: {report.study}", "\n".join(parts))


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
