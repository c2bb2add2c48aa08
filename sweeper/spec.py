"""The study spec (one TOML file per dataset): typed, frozen, validated at the boundary.

Precedence for every setting that has several sources, written down once:
command-line flag > environment variable > spec file > built-in default.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sweeper.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


IntRange = Annotated[int, Field(ge=0)] | tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]
PositiveIntRange = (
    Annotated[int, Field(ge=1)] | tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]
)
PositiveFloatRange = (
    Annotated[float, Field(gt=0)] | tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]
)


def bounds(value: Any) -> tuple[Any, Any]:
    """(low, high) of a [search] value that is either fixed or a [low, high] range."""
    return (value[0], value[1]) if isinstance(value, tuple) else (value, value)


class StudySection(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    seed: int = 0

    @property
    def direction(self) -> str:
        return "minimize" if self.metric == "loss" else "maximize"


class ModelSection(_Section):
    source: Literal["transformers", "torchvision"]
    name: Annotated[str, Field(min_length=1)]
    weights: str = "DEFAULT"
    trust_remote_code: bool = False
    max_length: Annotated[int, Field(ge=2, le=8192)] = 128


class DataSection(_Section):
    kind: Annotated[str, Field(min_length=1)]  # a name in data.LOADERS, checked when loading
    path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.15
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.15
    image_size: Annotated[int, Field(ge=8)] | None = None
    # examples the file cannot give (an empty text or label, a corrupt image): "refuse" names
    # them and stops; "drop" leaves them out, counted in the log and the report
    on_missing: Literal["refuse", "drop"] = "refuse"

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataSection:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction is {self.val_fraction + self.test_fraction:g}, "
                "but must stay below 0.9 to leave training data"
            )
        return self


class SearchSection(_Section):
    unfrozen_blocks: IntRange = (0, 6)
    # the practice: the backbone learns 10x to 100x slower than the head (wider ranges are allowed)
    lr_ratio: PositiveFloatRange = (0.01, 0.1)
    head_lr: PositiveFloatRange = (1e-4, 1e-2)
    head_epochs: PositiveIntRange = (1, 3)
    stage_epochs: PositiveIntRange = (1, 2)
    blocks_per_stage: PositiveIntRange = 1

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> SearchSection:
        for key in type(self).model_fields:
            low, high = bounds(getattr(self, key))
            if low > high:
                raise ValueError(f"{key} is [{low}, {high}], but low must not exceed high")
        low, high = bounds(self.lr_ratio)
        if high > 1.0:
            raise ValueError(
                f"lr_ratio is {self.lr_ratio}, but the backbone may not learn faster than the "
                "head: use values in (0, 1]"
            )
        return self


class BudgetSection(_Section):
    # the fine-tuning trials (with fe_trials > 0); all trials where the arms share one budget
    trials: Annotated[int, Field(ge=1)] = 20
    # feature-extraction trials, run first, on their own budget (0: the arms share `trials`)
    fe_trials: Annotated[int, Field(ge=0)] = 24
    pruner: Literal["none", "median", "hyperband"] = "hyperband"
    confirm_seeds: Annotated[int, Field(ge=1, le=20)] = 3  # paired seeds per arm to start with
    # more seeds while the interval straddles min_gain, up to this (an interval needs two)
    max_confirm_seeds: Annotated[int, Field(ge=2, le=50)] = 8

    @model_validator(mode="after")
    def _seed_budget_holds_the_start(self) -> BudgetSection:
        if self.max_confirm_seeds < self.confirm_seeds:
            raise ValueError(
                f"max_confirm_seeds is {self.max_confirm_seeds}, but must be at least "
                f"confirm_seeds ({self.confirm_seeds})"
            )
        return self


class DecisionSection(_Section):
    min_gain: Annotated[float, Field(ge=0)] = 0.01


class TrainSection(_Section):
    """Optional [train] section: how each trial trains (not searched)."""

    batch_size: Annotated[int, Field(ge=1)] = 32
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    device: str = "auto"
    compile: bool = False  # torch.compile each block (GPU; pays a compile per trial)
    # keep each run's best validation epoch; a stage that ends below the best so far is undone
    rollback: bool = True
    # the learning rate within each stage: a warmup over the first `warmup` of its steps, then
    # a decay to zero at the stage's end ("linear", "cosine"), or none ("constant")
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup: Annotated[float, Field(ge=0, lt=1)] = 0.1


class Spec(_Section):
    study: StudySection
    model: ModelSection
    data: DataSection
    search: SearchSection = SearchSection()
    budget: BudgetSection = BudgetSection()
    decision: DecisionSection = DecisionSection()
    train: TrainSection = TrainSection()
    # where the spec came from: relative data paths resolve against its folder
    source_path: Path = Field(default=Path("."), exclude=True)

    def resolve(self, path: str) -> Path:
        """A path from the spec, relative to the spec file's folder unless absolute."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.source_path.parent / p).resolve()

    def search_fingerprint(self) -> dict[str, Any]:
        """What the study's trials measure: a study refuses a spec where this changed."""
        return {
            "search": self.search.model_dump(mode="json"),
            "model": self.model.model_dump(mode="json"),
            # on_missing stays out: rows it drops change the examples, and the data's own digest
            # in the study's identity refuses that; a spec that only names the default again
            # (or whose file has nothing to drop) is the same study
            "data": self.data.model_dump(mode="json", exclude={"on_missing"}),
            "metric": self.study.metric,
            "seed": self.study.seed,
            # how each trial trains (where it runs aside): another setting, other values
            "train": self.train.model_dump(mode="json", exclude={"device"}),
        }


def load_spec(path: str | Path) -> Spec:
    """Read and validate a study spec; any problem is one UserError naming file, key and rule."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such spec file; pass a TOML file such as studies/vader.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    _lists_to_tuples(raw)
    try:
        return Spec.model_validate({**raw, "source_path": path.resolve()})
    except ValidationError as exc:
        raise UserError(_describe_validation_error(path, exc)) from None


def _lists_to_tuples(raw: dict[str, Any]) -> None:
    for section in raw.values():
        if isinstance(section, dict):
            for key, value in section.items():
                if isinstance(value, list):
                    section[key] = tuple(value)


def _describe_validation_error(path: Path, exc: ValidationError) -> str:
    lines = []
    seen: set[tuple[Any, ...]] = set()
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"] if not str(part).isdigit())
        # a union (fixed value | range) reports once per member; say it once
        loc = tuple(part for part in loc if not _is_union_member_label(part))
        if loc in seen:
            continue
        seen.add(loc)
        lines.append(f"{path}: {_describe_one(loc, error)}")
    return "\n".join(lines)


def _is_union_member_label(part: str) -> bool:
    return part in {"int", "float", "str", "tuple[int,int]", "tuple[float,float]"} or (
        part.startswith(("constrained-", "tuple[", "function-"))
    )


def _describe_one(loc: tuple[str, ...], error: dict[str, Any]) -> str:
    section, key = (loc[0], ".".join(loc[1:])) if loc else ("", "")
    where = f"[{section}] {key}".strip() if key else f"[{section}]"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc)
        return f"{where} is not a known key; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{where} is missing"
    shown = error.get("input")
    shown = list(shown) if isinstance(shown, tuple) else shown
    message = error["msg"].removeprefix("Value error, ")
    if kind in {"literal_error"}:
        return f"{where} is {shown!r}, but {message[0].lower()}{message[1:]}"
    if isinstance(shown, dict):
        return f"{where}: {message}"
    return f"{where} is {shown!r}: {message}"


def _allowed_keys(loc: tuple[str, ...]) -> list[str]:
    if len(loc) == 1:
        return [k for k in Spec.model_fields if k != "source_path"]
    section_model = Spec.model_fields[loc[0]].annotation
    return list(section_model.model_fields) if section_model else []


def geometric_mid(low: float, high: float) -> float:
    return math.sqrt(low * high)
