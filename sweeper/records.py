"""What a trial leaves in the study beside its params and value, and how to read it back.

A trial's seconds are one user attribute, ``seconds`` (``{"wall": .., "device": .., "bookkeeping":
..}``): each attribute is a database write, and a cached feature-extraction trial is short enough
for a few of them to show. Its strategy is read from its ``unfrozen_blocks`` param. Studies of
earlier versions, with ``wall_seconds``, ``device_seconds`` and ``strategy`` attributes, read alike.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial

SECONDS_ATTR = "seconds"
KINDS = ("wall", "device", "bookkeeping")


def seconds_of(trial: FrozenTrial, kind: str) -> float:
    """The trial's ``wall``, ``device`` or ``bookkeeping`` seconds (0 where not recorded)."""
    recorded = trial.user_attrs.get(SECONDS_ATTR)
    if isinstance(recorded, dict):
        return float(recorded.get(kind, 0.0))
    return float(trial.user_attrs.get(f"{kind}_seconds", 0.0))


def strategy_of(trial: FrozenTrial) -> str | None:
    """``feature_extraction`` (no block unfrozen) or ``fine_tuning``; ``None`` for a trial that
    stopped before it had parameters."""
    if "unfrozen_blocks" not in trial.params:
        return trial.user_attrs.get("strategy")
    return "fine_tuning" if trial.params["unfrozen_blocks"] else "feature_extraction"
