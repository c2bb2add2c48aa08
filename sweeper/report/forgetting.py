"""The report's forgetting figures, from what the trials and the confirmation runs recorded."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.records import TrialAttr
from sweeper.report.model import ConfirmedForgetting, Forgetting, TrialForgetting


def summarize_forgetting(
    study: optuna.Study, best: FrozenTrial | None, runs: list[dict] | None
) -> Forgetting | None:
    """The best fine-tuning trial stage by stage, the final figures of every completed
    fine-tuning trial, and the confirmation runs' (mean over seeds)."""
    if best is None:
        return None
    per_stage = best.user_attrs.get(TrialAttr.FORGETTING) or []
    final = per_stage[-1] if per_stage else None
    return Forgetting(
        trial=best.number,
        per_stage=per_stage,
        cka=final["cka"] if final else None,
        weight_change=final["weight_change"] if final else None,
        weight_change_mean=_mean(final["weight_change"].values()) if final else None,
        confirmed=_confirmed(runs),
        trials=[
            _final_figures(t)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(TrialAttr.FORGETTING)
        ],
    )


def _confirmed(runs: list[dict] | None) -> ConfirmedForgetting | None:
    measured = [run["forgetting"] for run in runs or [] if run.get("forgetting")]
    if not measured:
        return None
    blocks = measured[0]["weight_change"]
    weight_change = {b: _mean(m["weight_change"][b] for m in measured) for b in blocks}
    return ConfirmedForgetting(
        cka=_mean(m["cka"] for m in measured),
        cka_seeds=[m["cka"] for m in measured],
        weight_change=weight_change,
        weight_change_mean=_mean(weight_change.values()),
    )


def _final_figures(trial: FrozenTrial) -> TrialForgetting:
    final = trial.user_attrs[TrialAttr.FORGETTING][-1]
    return TrialForgetting(
        trial=trial.number,
        value=trial.value,
        unfrozen_blocks=trial.params.get("unfrozen_blocks"),
        cka=final["cka"],
        weight_change_mean=_mean(final["weight_change"].values()),
    )


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")
