"""How the renderers write numbers, intervals and strategy names (shared by every section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def number(value: Any, fmt: str = "{:.4f}") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return fmt.format(value)


def interval_text(ci) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "–"


def strategy_name(strategy: str | None) -> str:
    return strategy.replace("_", " ") if strategy else "–"


def count(value: int | None) -> str:
    """A count of parameters or bytes, short: 1,234 / 45.6k / 2.35M / 1G."""
    if value is None:
        return "–"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:,}"


def command(verb: str, spec_path: Path) -> str:
    """The command line that runs ``verb`` on this spec, quoted for a message: the spec's path
    relative to the working folder when it lies under it (a user's spec need not be the default)."""
    try:
        shown = spec_path.relative_to(Path.cwd())
    except ValueError:
        shown = spec_path
    return f"`python -m sweeper {verb} {shown}`"
