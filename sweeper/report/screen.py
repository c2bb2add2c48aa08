"""The section that opens the report of a study a candidate screen kept: the ranking (candidate,
pretrained or not, the linear probe's balanced accuracy, LogME, the seconds each took), the seconds
the whole screen took, and next to each candidate what a full study of it costs: this study's own
search, measured; for the others an estimate, this study's search scaled by their feature
seconds over this one's (none where features came from the cache: no computing time to scale).

Built from what the study recorded (`records.StudyAttr.SCREEN`, `screen.ScreenResult.to_json`);
a study without a screen has no section, and its report is as before."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass
from typing import Any, Literal

Basis = Literal["measured", "estimate"]


@dataclass(frozen=True)
class ScreenRow:
    candidate: str
    study: str
    pretrained: bool
    probe: float  # balanced accuracy on the validation split
    logme: float
    seconds: float  # the screen's time on this candidate
    feature_seconds: float
    from_cache: bool
    feature_dim: int
    kept: bool
    study_seconds: float | None  # a full study's search, device-seconds (None: nothing to scale)
    study_basis: Basis | None


@dataclass(frozen=True)
class Screen:
    """The candidate screen, as this study's report shows it (rows best probe first)."""

    rows: tuple[ScreenRow, ...]
    keep: int
    seconds: float
    num_classes: int
    logme_agrees: bool
    study: str  # the report's own study

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {"ranking": list(data.pop("rows")), **data}


def screen_of(recorded: dict | None, study: str, search_seconds: float) -> Screen | None:
    """The section from the study's record, with each candidate's full-study cost beside it;
    ``search_seconds``: the device-seconds of this study's trials."""
    if not recorded:
        return None
    ranking = recorded["ranking"]
    own = next((row for row in ranking if row["study"] == study), None)
    rows = tuple(ScreenRow(**row, **_study_cost(row, own, search_seconds)) for row in ranking)
    return Screen(
        rows, recorded["keep"], recorded["seconds"], recorded["num_classes"], recorded["logme_agrees"], study
    )


def _study_cost(row: dict, own: dict | None, search_seconds: float) -> dict:
    if row is own:
        return {"study_seconds": search_seconds, "study_basis": "measured"}
    comparable = (
        own is not None and not (row["from_cache"] or own["from_cache"]) and own["feature_seconds"] > 0
    )
    if not comparable:
        return {"study_seconds": None, "study_basis": None}
    return {
        "study_seconds": search_seconds * row["feature_seconds"] / own["feature_seconds"],
        "study_basis": "estimate",
    }


HEADER = (
    "rank",
    "candidate",
    "pretrained",
    "probe balanced accuracy (val)",
    "LogME (train)",
    "screen seconds",
    "a full study (search device-seconds)",
)


def screen_rows(screen: Screen) -> list[tuple[str, ...]]:
    return [
        (
            str(rank),
            row.candidate + (" (this study)" if row.study == screen.study else " (kept)" if row.kept else ""),
            "yes" if row.pretrained else "no (random weights)",
            f"{row.probe:.4f}",
            f"{row.logme:.4f}",
            f"{row.seconds:.1f} (features {row.feature_seconds:.1f}{', from the cache' if row.from_cache else ''})",
            "–" if row.study_seconds is None else f"{row.study_seconds:.0f} ({row.study_basis})",
        )
        for rank, row in enumerate(screen.rows, 1)
    ]


def screen_note(screen: Screen) -> str:
    agree = "in the same order" if screen.logme_agrees else "in another order (the probe decides)"
    return (
        f"The screen took {screen.seconds:.1f} s for {len(screen.rows)} candidates: each model loaded, its "
        "pooled features of the training and validation splits computed once (through the frozen-prefix "
        "cache, where this study found them), a linear probe trained on train and scored on val "
        f"(chance {1 / screen.num_classes:.3f}), and LogME on train. The probe ranks them; LogME ranks them "
        f"{agree}; {kept_text(screen.keep)}. A full study's cost is this study's "
        "search, measured; for another candidate, an estimate: this study's search scaled by that "
        "candidate's feature seconds over this one's (– where features came from the cache)"
    )


def kept_text(keep: int) -> str:
    """``[model] keep`` in words: which candidates go on to a study."""
    return "the best one goes on to a study" if keep == 1 else f"the best {keep} go on to a study each"


def screen_markdown(screen: Screen | None) -> list[str]:
    """The section in Markdown; nothing for a study without a screen."""
    if screen is None:
        return []
    lines = ["## Choosing the backbone: the candidate screen", "", "| " + " | ".join(HEADER) + " |"]
    lines += ["|" + "---|" * len(HEADER)] + ["| " + " | ".join(row) + " |" for row in screen_rows(screen)]
    return lines + ["", f"_{screen_note(screen)}._", ""]


def screen_html(screen: Screen | None) -> str:
    if screen is None:
        return ""
    esc = html.escape
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in HEADER) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in screen_rows(screen)
    )
    return (
        f"<h2>Choosing the backbone: the candidate screen</h2><table id='screen'>{head}{body}</table>"
        f"<p class='note'>{esc(screen_note(screen))}.</p>"
    )
