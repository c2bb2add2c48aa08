"""The backbone screen (``[model] candidates``): before any study, each candidate's pooled features
of the training and validation splits, computed once through the frozen-prefix cache (where the
kept candidate's study then finds them), scored two cheap ways: the decision matrix's linear probe
(trained on train, balanced accuracy on val) and LogME (the evidence of a Bayesian linear model on
the training features, `logme.logme`). The probe ranks them, being the direct measure of what a
frozen head reaches on this task; LogME stands beside it, and the result says whether the two
orders agree. The ``[model] keep`` best go on to a study each (named after them).

No Optuna, no MLflow: the commands record the result (`ScreenResult.to_json`) on each kept study.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from sweeper.cache import PrefixCache
from sweeper.data import RawData, Splits
from sweeper.logme import logme
from sweeper.runtime import StudyRuntime, labelled_split, prepare
from sweeper.similarity import linear_probe_score
from sweeper.spec import Spec
from sweeper.spec_candidates import candidate_specs, is_pretrained

Say = Callable[[str], None]


@dataclass(frozen=True)
class CandidateScore:
    """One candidate of the screen: its scores and what they cost."""

    candidate: str  # the model as the spec names it, with its weights where not the default
    study: str  # the study it gets (has, if kept)
    pretrained: bool  # False for weights = "none": the control that says what pretraining is worth
    probe: float  # linear probe, balanced accuracy on the validation split (chance: 1 / classes)
    logme: float  # LogME of the training features (higher is better; comparable across models)
    seconds: float  # loading the model, the features, the probe and LogME
    feature_seconds: float  # the pooled features of both splits
    from_cache: bool  # the features were read from the frozen-prefix cache, not computed
    feature_dim: int
    kept: bool = False


@dataclass(frozen=True)
class ScreenResult:
    """The candidates, best probe first, and which go on to a study.

    Example:
        >>> result = screen(spec, "cpu", PrefixCache(None))  # the default data, MiniLM and its control
        >>> [(c.pretrained, round(c.probe, 3), round(c.logme, 3), c.kept) for c in result.ranking]
        [(True, 0.671, -0.319, True), (False, 0.424, -0.556, False)]
    """

    ranking: tuple[CandidateScore, ...]
    keep: int
    seconds: float  # the whole screen: the data once, then every candidate
    num_classes: int

    @property
    def kept(self) -> tuple[CandidateScore, ...]:
        return tuple(c for c in self.ranking if c.kept)

    @property
    def logme_agrees(self) -> bool:
        """LogME orders the candidates as the probe does."""
        return list(self.ranking) == sorted(self.ranking, key=lambda c: -c.logme)

    def to_json(self) -> dict:
        """What a kept study records (`records.StudyAttr.SCREEN`) and its report reads."""
        return {
            "ranking": [asdict(c) for c in self.ranking],
            "keep": self.keep,
            "seconds": self.seconds,
            "num_classes": self.num_classes,
            "logme_agrees": self.logme_agrees,
        }


def screen(spec: Spec, device: str, cache: PrefixCache | None, say: Say = lambda _: None) -> ScreenResult:
    """Score every ``[model] candidates`` model of ``spec`` on its frozen features and rank them.

    Loads the data once and each candidate in turn (freed before the next); raises UserError on
    bad input (a model that does not load, data that does not fit it) and writes nothing but
    frozen-prefix cache entries."""
    started = time.perf_counter()
    specs = candidate_specs(spec)
    labelled = labelled_split(specs[0], cache.directory if cache else None)  # the data is every candidate's
    scores = [_scored(candidate, device, cache, labelled, say) for candidate in specs]
    ranked = sorted(scores, key=lambda c: (-c.probe, -c.logme))  # sorted() keeps the spec's order on ties
    ranking = tuple(replace(c, kept=rank < spec.model.keep) for rank, c in enumerate(ranked))
    return ScreenResult(ranking, spec.model.keep, time.perf_counter() - started, len(labelled[0].classes))


def _scored(
    spec: Spec, device: str, cache: PrefixCache | None, labelled: tuple[RawData, Splits], say: Say
) -> CandidateScore:
    started = time.perf_counter()
    runtime = StudyRuntime(prepare(spec, device, labelled=labelled), cache)
    counts, loaded = ((cache.hits, cache.misses) if cache is not None else None), time.perf_counter()
    train, val = runtime.pretrained_features("train"), runtime.pretrained_features("val")
    feature_seconds = time.perf_counter() - loaded
    from_cache = cache is not None and cache.misses == counts[1] and cache.hits > counts[0]
    labels, splits = runtime.data.labels, runtime.splits
    train_labels, val_labels = labels[torch.as_tensor(splits.train)], labels[torch.as_tensor(splits.val)]
    probe = linear_probe_score(train, train_labels, val, val_labels)
    evidence = logme(train.double().numpy(), train_labels.numpy())
    del runtime  # the model, before the next candidate loads
    _free_memory()
    model = spec.model
    name = model.name if model.weights == "DEFAULT" else f"{model.name} (weights {model.weights})"
    score = CandidateScore(
        candidate=name,
        study=spec.study.name,
        pretrained=is_pretrained(model.weights),
        probe=probe,
        logme=evidence,
        seconds=time.perf_counter() - started,
        feature_seconds=feature_seconds,
        from_cache=from_cache,
        feature_dim=int(train.shape[1]),
    )
    say(
        f"screen: {name}: probe {probe:.4f} balanced accuracy, LogME {evidence:.4f}, "
        f"{score.seconds:.1f} s{' (features from the cache)' if from_cache else ''}"
    )
    return score


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
