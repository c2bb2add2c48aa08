"""The study spec (one TOML file per dataset): typed, frozen, validated at the boundary.

Precedence for every setting that has several sources, written down once:
command-line flag > environment variable > spec file > built-in default.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sweeper.errors import UserError
from sweeper.records import METHOD_NAMES, METHOD_OWN_PARAMS, UNFREEZE
from sweeper.spec_candidates import Candidate, check_model_choice, parse_candidates
from sweeper.spec_messages import allowed_keys, describe_validation_error


class _Section(BaseModel):
    # TOML reads `inf` and `nan` as floats: no setting takes them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _true_and_false_only_for_switches(cls, values: Any) -> Any:
        # pydantic reads true as 1: `trials = true` would run one trial
        for key, value in values.items() if isinstance(values, dict) else ():
            field = cls.model_fields.get(key)
            members = value if isinstance(value, list | tuple) else [value]
            if field and field.annotation is not bool and any(isinstance(v, bool) for v in members):
                raise ValueError(
                    f"{key} is true/false, but only on/off keys (such as [train] rollback) take that"
                )
        return values


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


# The study name is a folder name (reports/<name>/, and the temporary names it is written under),
# a link target in the table across studies, the MLflow experiment and run names, the Optuna study
# name, and something users type in shell commands: ASCII letters, digits and . _ - only (no space,
# no slash), a letter or digit first (no hidden folder, no "..", nothing that reads as a flag), and
# at most 100 characters (a file name holds 255 bytes, an MLflow run name 250).
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
STUDY_NAME_RULE = (
    "use 1–100 characters: letters, digits and . _ - (no spaces), starting with a letter or "
    'digit, such as "vader-minilm" (it names the report folder, the MLflow experiment and the Optuna study)'
)
SEED_MAX = 2**32 - 1  # numpy's seed range


class StudySection(_Section):
    name: str
    metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _name_suits_files_and_stores(cls, name: str) -> str:
        if not STUDY_NAME.fullmatch(name):
            raise ValueError(STUDY_NAME_RULE)
        return name

    @field_validator("seed")
    @classmethod
    def _seed_in_numpy_range(cls, seed: int) -> int:
        if not 0 <= seed <= SEED_MAX:
            raise ValueError(f"use a whole number from 0 to {SEED_MAX} (2**32 - 1, the seeds numpy takes)")
        return seed

    @property
    def direction(self) -> str:
        return "minimize" if self.metric == "loss" else "maximize"


class ModelSection(_Section):
    source: Literal["transformers", "torchvision"]
    name: Annotated[str, Field(min_length=1)] | None = None  # None only where candidates are listed
    weights: str = "DEFAULT"  # torchvision: an enum name or a file; both: "none" (random weights)
    trust_remote_code: bool = False
    max_length: Annotated[int, Field(ge=2, le=8192)] = 128
    # models to screen before the study (spec_candidates.py); the `keep` best get a study each
    candidates: tuple[Candidate, ...] | None = None
    keep: Annotated[int, Field(ge=1)] = 1

    _candidates_parsed = field_validator("candidates", mode="before")(parse_candidates)

    @model_validator(mode="after")
    def _one_model_or_candidates(self) -> ModelSection:
        check_model_choice(self)
        return self


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
    # how the unfrozen blocks train (fine-tuning trials only): one method, or a list to search over
    method: str | tuple[str, ...] = UNFREEZE
    lora_rank: PositiveIntRange = (4, 16)  # "lora": the adapters' rank
    lora_alpha: PositiveFloatRange = 16.0  # "lora": the adapters' scale is lora_alpha / lora_rank
    # "layer_decay": block i learns at head_lr * lr_ratio * lr_decay^(top - i)
    lr_decay: PositiveFloatRange = (0.6, 0.95)

    @field_validator("method")
    @classmethod
    def _methods_are_known(cls, method: str | tuple[str, ...]) -> str | tuple[str, ...]:
        names = (method,) if isinstance(method, str) else method
        if not names:
            raise ValueError(f"method is an empty list; use one or more of {', '.join(METHOD_NAMES)}")
        for name in names:
            if name not in METHOD_NAMES:
                raise ValueError(
                    f"method {name!r} is not known; use one or more of {', '.join(METHOD_NAMES)}"
                )
        if len(set(names)) < len(names):
            raise ValueError(f"method lists {list(names)}: name each method once")
        return method

    @property
    def methods(self) -> tuple[str, ...]:
        """The fine-tuning methods the study searches over (one where [search] method is fixed)."""
        return (self.method,) if isinstance(self.method, str) else self.method

    def unused_keys(self) -> set[str]:
        """The keys only methods the study does not search use (so they change no trial)."""
        unused = {
            key for method, own in METHOD_OWN_PARAMS.items() if method not in self.methods for key in own
        }
        return unused | ({"method"} if self.methods == (UNFREEZE,) else set())

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> SearchSection:
        for key in type(self).model_fields:
            if key == "method":
                continue
            low, high = bounds(getattr(self, key))
            if low > high:
                raise ValueError(f"{key} is [{low}, {high}], but low must not exceed high")
        low, high = bounds(self.lr_ratio)
        if high > 1.0:
            raise ValueError(
                f"lr_ratio is {self.lr_ratio}, but the backbone may not learn faster than the "
                "head: use values in (0, 1]"
            )
        if bounds(self.lr_decay)[1] > 1.0:
            raise ValueError(
                f"lr_decay is {self.lr_decay}, but a lower block may not learn faster than the one "
                "above it: use values in (0, 1]"
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
            # keys that no searched method uses change no trial (nor studies made before them)
            "search": self.search.model_dump(mode="json", exclude=self.search.unused_keys()),
            # a screened study is that of its candidate alone: the list it was kept from is not
            # part of what its trials measure
            "model": self.model.model_dump(mode="json", exclude={"candidates", "keep"}),
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
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as some editors write it, is read
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise UserError(
            f"{path}: arrays or inline tables nest too deeply to read; a spec holds [section] tables "
            "of key = value, where a value is a number, a string, true/false or a [low, high] list"
        ) from None
    if "source_path" in raw:  # a field of the loaded spec, not a key of the file
        raise UserError(
            f"{path}: [source_path] is not a known key; allowed: {', '.join(allowed_keys(Spec, ()))}"
        )
    _lists_to_tuples(raw)
    try:
        return Spec.model_validate({**raw, "source_path": path.resolve()})
    except ValidationError as exc:
        raise UserError(describe_validation_error(path, exc, Spec)) from None


def _lists_to_tuples(raw: dict[str, Any]) -> None:
    for section in raw.values():
        if isinstance(section, dict):
            for key, value in section.items():
                if isinstance(value, list):
                    section[key] = tuple(value)


def geometric_mid(low: float, high: float) -> float:
    return math.sqrt(low * high)
