"""How far fine-tuning moved the backbone: relative weight change of each unfrozen block and linear
CKA between the pretrained and the fine-tuned pooled features on the validation split.

Measured at the end of each stage that trains blocks, so a run shows forgetting grow as stages
unfreeze more of the network. The pretrained features are computed once per study runtime.
"""

from __future__ import annotations

import weakref

import torch
from optuna.trial import FrozenTrial, TrialState

from sweeper.similarity import linear_cka, pooled_features, relative_weight_change
from sweeper.stages import StagePlan

# id(runtime) -> (weak reference to it, pretrained pooled validation features)
_PRETRAINED_FEATURES: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


class ForgettingMeter:
    """Forgetting figures of one fine-tuned model, against the pretrained one.

    Args:
        runtime: the study runtime (model, data, splits, device, state sources).
        model: the model about to be trained; it must still hold the pretrained weights.
        plan: its stage plan.

    Example:
        >>> meter = ForgettingMeter(runtime, model, plan)   # before training
        >>> train_staged(..., features_at=meter.stage_ends)  # results there carry val_features
        >>> if meter.is_stage_end(result.epoch):
        ...     run.log_epoch(result.stage, meter.measure(result.stage, result.val_features))
    """

    def __init__(self, runtime, model, plan: StagePlan) -> None:
        self.runtime = runtime
        self.model = model
        self.plan = plan
        self.history: list[dict] = []
        self._batch = runtime.spec.train.batch_size * 4
        # the last epoch of each stage that trains backbone blocks (stage 0 only trains the head)
        self.stage_ends = frozenset(
            start + stage.epochs - 1
            for start, stage in zip(plan.stage_starts, plan.stages, strict=True)
            if stage.trainable_blocks
        )
        with torch.random.fork_rng(devices=[]):  # the reference head must not move the trial's RNG
            self._reference = runtime.pretrained.family.cut(runtime.pretrained.module, runtime.num_classes)
        self._pretrained = _pretrained_features(runtime, model, self._batch)

    def is_stage_end(self, epoch: int) -> bool:
        return epoch in self.stage_ends

    def measure(self, stage: int, tuned: torch.Tensor | None = None) -> dict[str, float]:
        """The figures now, as MLflow metrics; also appended to ``history``. ``tuned``: the
        model's pooled validation features, when the evaluation just computed them."""
        if tuned is None:
            source = self.runtime.source(self.model, "val", self.plan.cut)
            tuned = pooled_features(self.model, source, self._batch, self.runtime.device)
        changes = {
            str(index): relative_weight_change(self.model.blocks[index], self._reference.blocks[index])
            for index in range(self.plan.cut, self.plan.num_blocks)
        }
        cka = linear_cka(self._pretrained, tuned)
        self.history.append({"stage": stage, "cka": cka, "weight_change": changes})
        metrics = {"forgetting_cka": cka, "weight_change_mean": sum(changes.values()) / len(changes)}
        metrics.update({f"weight_change_block{index}": value for index, value in changes.items()})
        return metrics


def _pretrained_features(runtime, model, batch_size: int) -> torch.Tensor:
    entry = _PRETRAINED_FEATURES.get(id(runtime))
    if entry is not None and entry[0]() is runtime:
        return entry[1]
    top = runtime.source(model, "val", model.num_blocks)
    features = pooled_features(model, top, batch_size, runtime.device)
    key = id(runtime)
    _PRETRAINED_FEATURES[key] = (
        weakref.ref(runtime, lambda _: _PRETRAINED_FEATURES.pop(key, None)),
        features,
    )
    return features


def summarize_forgetting(study, best: FrozenTrial | None, runs: list[dict] | None) -> dict | None:
    """The report's forgetting figures: the best fine-tuning trial stage by stage, the final values
    of every completed fine-tuning trial, and the confirmation runs' (mean over seeds)."""
    if best is None:
        return None
    per_stage = best.user_attrs.get("forgetting") or []
    final = per_stage[-1] if per_stage else None
    figures: dict = {
        "trial": best.number,
        "per_stage": per_stage,
        "cka": final["cka"] if final else None,
        "weight_change": final["weight_change"] if final else None,
        "weight_change_mean": _mean(final["weight_change"].values()) if final else None,
    }
    measured = [run["forgetting"] for run in runs or [] if run.get("forgetting")]
    if measured:
        blocks = measured[0]["weight_change"]
        figures["confirmed"] = {
            "cka": _mean(m["cka"] for m in measured),
            "cka_seeds": [m["cka"] for m in measured],
            "weight_change": {b: _mean(m["weight_change"][b] for m in measured) for b in blocks},
        }
        figures["confirmed"]["weight_change_mean"] = _mean(figures["confirmed"]["weight_change"].values())
    figures["trials"] = [
        {
            "trial": t.number,
            "value": t.value,
            "unfrozen_blocks": t.params.get("unfrozen_blocks"),
            "cka": t.user_attrs["forgetting"][-1]["cka"],
            "weight_change_mean": _mean(t.user_attrs["forgetting"][-1]["weight_change"].values()),
        }
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("forgetting")
    ]
    return figures


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")
