"""The report as typed values: what the builder makes, what the renderers read, and what
report.json holds (`Report.to_json`, a fixed schema that scripts can read; see DESIGN.md).

``to_json`` keeps the schema of earlier versions: the keys an arm has only once confirmed
(``seed_values``, ``test``, ...) and the forgetting figures of the confirmation runs are absent,
not null, before that. Since the sequential rule (issue 11) ``gain_ci`` is one interval for both
noise sources, so ``gain_ci_seeds`` and ``gain_ci_test_examples`` are gone; ``seeds``,
``conclusive``, ``stopped``, ``decision_interval`` and ``complete`` are new; since issue 12
``dropped_examples`` (0 unless ``[data] on_missing = "drop"`` left examples out). Since issue 13
(fine-tuning methods) ``methods`` (feature extraction and the best configuration of each method,
as points of metric against cost), ``cheapest_method`` and ``cheapest_reason``; an arm has
``trainable_params`` and ``ship_bytes``, and the fine-tuning arm ``method``. A study kept by a
candidate screen (``[model] candidates``) opens with ``screen`` (the ranking and its seconds); the
others have no such key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sweeper.records import Strategy
from sweeper.report.screen import Screen

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


@dataclass(frozen=True)
class ArmConfirmation:
    """An arm's confirmation runs, summarised over seeds (test split)."""

    seed_values: list[float]  # the test metric of each seed
    seed_std: float | None
    test: dict[str, float]  # every test metric, mean over seeds
    confirm_val_value: float  # the validation metric of the runs, mean over seeds
    prefix_seconds: float
    train_seconds: float
    rolled_back: list[list[int]] = field(default_factory=list)  # per seed: the stages rolled back


@dataclass(frozen=True)
class Arm:
    """The best trial of one strategy, and, once confirmed, its confirmation runs."""

    trial: int
    params: dict[str, float | int]
    mlflow_run_id: str | None
    search_value: float  # the trial's validation value (it was selected on it)
    value: float  # the report's value: the test mean once confirmed, else search_value
    device_seconds: float  # one run: from scratch once confirmed, else the best trial's
    wall_seconds: float
    trials: int  # trials of this strategy in the search
    arm_device_seconds: float
    arm_wall_seconds: float
    confirmation: ArmConfirmation | None = None
    stages: list[dict] | None = None  # the best trial's stages, kept or rolled back ([train] rollback)
    method: str | None = None  # the fine-tuning method (None for feature extraction)
    trainable_params: int | None = None  # in the last stage, head included (None: not recorded)
    ship_bytes: int | None = None  # on disk, what the method would ship

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        confirmation = data.pop("confirmation")
        if data["method"] is None:
            del data["method"]
        return {**data, **(confirmation or {})}


@dataclass(frozen=True)
class MethodPoint:
    """Feature extraction, or the best configuration of one fine-tuning method: a point of the
    methods comparison (metric against trainable parameters and against device-seconds)."""

    method: str  # "feature_extraction", or the method's name ("unfreeze", "lora", ...)
    trial: int
    value: float  # the test mean once confirmed, else the search's validation value
    trainable_params: int | None
    ship_bytes: int | None
    device_seconds: float  # per run: from scratch once confirmed, else the best trial's
    trials: int  # trials of this method (or of feature extraction) in the search
    gain: float | None = None  # over feature extraction, positive = better (None for it)
    gain_ci: tuple[float, float] | None = None  # 95%, seeds and test examples together
    verdict: str | None = None  # the rule's look: fine_tuning | feature_extraction | more_seeds
    picked: bool = False  # the method of the report's fine-tuning arm
    within_best: bool | None = None  # its gain lies in the best method's 95% interval
    front_params: bool | None = None  # on the Pareto front of metric vs trainable parameters
    front_seconds: bool = False  # on the Pareto front of metric vs device-seconds

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "gain_ci": _pair(self.gain_ci)}


@dataclass(frozen=True)
class Matrix:
    """The decision-matrix reading: dataset size × similarity to the pretraining data."""

    train_examples: int
    per_class: dict[str, int] | None
    per_class_min: int
    per_class_mean: float
    probe_balanced_accuracy: float | None
    probe_score: float | None  # 0 at chance, 1 perfect
    size: str  # small | large
    similarity: str | None  # similar | different; None before the probe ran
    quadrant: str | None
    advice: str | None
    expected: str | None
    agreement: str  # agrees | disagrees | unknown
    thresholds: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConfirmedForgetting:
    cka: float
    cka_seeds: list[float]
    weight_change: dict[str, float]
    weight_change_mean: float


@dataclass(frozen=True)
class TrialForgetting:
    trial: int
    value: float
    unfrozen_blocks: int | None
    cka: float
    weight_change_mean: float


@dataclass(frozen=True)
class Forgetting:
    """How far fine-tuning moved the backbone: the best fine-tuning trial stage by stage, every
    completed fine-tuning trial's final figures, and the confirmation runs'."""

    trial: int
    per_stage: list[dict]  # as the trial recorded them: {"stage", "cka", "weight_change"}
    cka: float | None
    weight_change: dict[str, float] | None
    weight_change_mean: float | None
    confirmed: ConfirmedForgetting | None
    trials: list[TrialForgetting] = field(default_factory=list)

    @property
    def final_cka(self) -> float | None:
        """The CKA the headline shows: the confirmation runs', else the best trial's."""
        return self.confirmed.cka if self.confirmed is not None else self.cka

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.confirmed is None:
            del data["confirmed"]
        trials = data.pop("trials")
        return {**data, "trials": trials}


@dataclass(frozen=True)
class StudyCost:
    trials: int
    device_seconds: float
    wall_seconds: float
    elapsed_seconds: float | None  # first trial start to last trial end


@dataclass(frozen=True)
class ConfirmationCost:
    runs: int
    device_seconds: float
    wall_seconds: float


@dataclass(frozen=True)
class Cost:
    study: StudyCost
    confirmation: ConfirmationCost


@dataclass(frozen=True)
class Report:
    """The decision and its evidence, for one study.

    Example:
        >>> report = build_report(study, spec)            # search only: provisional
        >>> report.decision, report.metric, report.confirmed
        ('fine_tuning', 'val_accuracy', False)
        >>> json.dumps(report.to_json())                   # report.json
    """

    study: str
    decision: Strategy
    confirmed: bool
    feature_extraction: Arm | None
    fine_tuning: Arm | None
    gain: float | None  # fine-tuning minus feature extraction (positive = fine-tuning better)
    gain_ci: tuple[float, float] | None  # at ``confidence``: seeds and test examples together
    confidence: float
    seeds: int  # paired confirmation seeds per arm (0: search only)
    conclusive: bool | None  # None before confirmation; False: the seed budget ended undecided
    stopped: str | None  # why confirmation stopped adding seeds
    decision_interval: tuple[float, float] | None  # the rule's bounds at its corrected level
    decision_confidence: float | None
    seed_share: float | None  # the share of the gain's variance from seeds (the rest: test examples)
    complete: bool  # the study holds its whole budget of finished trials, none running
    trials_note: str  # what the study holds: finished of budget, running
    cost_ratio: float | None  # fine-tuning / feature extraction, device-seconds per run
    gain_per_device_hour: float | None
    cost: Cost
    matrix: Matrix | None
    forgetting: Forgetting | None
    reason: str
    metric_name: str  # the spec's metric: accuracy | macro_f1 | loss
    direction: str  # maximize | minimize
    min_gain: float
    evidence: str
    plots: tuple[str, ...] = ()  # the PNG files beside the report
    dropped_examples: int = 0  # left out of the data under [data] on_missing = "drop"
    methods: tuple[MethodPoint, ...] = ()  # feature extraction first, then each method that ran
    cheapest_method: str | None = None  # the cheapest method within the best's 95% interval
    cheapest_reason: str | None = None  # the line that says so, or why none is named
    # methods that ran without a completed trial (all pruned or failed): (method, trials), nothing
    # of theirs to confirm
    methods_not_completed: tuple[tuple[str, int], ...] = ()
    screen: Screen | None = None  # the candidate screen that kept this study ([model] candidates)

    @property
    def compares_methods(self) -> bool:
        """More than one fine-tuning method ran: the report compares them."""
        tuned = sum(point.method != "feature_extraction" for point in self.methods)
        return tuned + len(self.methods_not_completed) > 1

    @property
    def split(self) -> str:
        """Where the values were measured: the test split once confirmed, else validation."""
        return "test" if self.confirmed else "val"

    @property
    def metric(self) -> str:
        return f"{self.split}_{self.metric_name}"

    def to_json(self) -> dict[str, Any]:
        """report.json: the same keys, in the same places, as every earlier version; a study
        kept by a candidate screen opens with it (``screen``)."""
        data = {
            "study": self.study,
            "decision": self.decision,
            "confirmed": self.confirmed,
            "feature_extraction": _json(self.feature_extraction),
            "fine_tuning": _json(self.fine_tuning),
            "gain": self.gain,
            "gain_ci": _pair(self.gain_ci),
            "confidence": self.confidence,
            "seeds": self.seeds,
            "conclusive": self.conclusive,
            "stopped": self.stopped,
            "decision_interval": _pair(self.decision_interval),
            "decision_confidence": self.decision_confidence,
            "seed_share": self.seed_share,
            "complete": self.complete,
            "trials_note": self.trials_note,
            "cost_ratio": self.cost_ratio,
            "gain_per_device_hour": self.gain_per_device_hour,
            "cost": asdict(self.cost),
            "matrix": _json(self.matrix),
            "forgetting": _json(self.forgetting),
            "reason": self.reason,
            "metric": self.metric,
            "direction": self.direction,
            "min_gain": self.min_gain,
            "evidence": self.evidence,
            "plots": list(self.plots),
            "dropped_examples": self.dropped_examples,
            "methods": [point.to_json() for point in self.methods],
            "cheapest_method": self.cheapest_method,
            "cheapest_reason": self.cheapest_reason,
            "methods_not_completed": [{"method": m, "trials": n} for m, n in self.methods_not_completed],
        }
        return data if self.screen is None else {"screen": self.screen.to_json(), **data}


def _json(value) -> dict[str, Any] | None:
    return value.to_json() if value is not None else None


def _pair(value: tuple[float, float] | None) -> list[float] | None:
    return list(value) if value is not None else None
