"""The gain of paired confirmation runs: its estimate (seeds and test examples together), the
sequential rule's look at it, and what the report says of that look."""

from __future__ import annotations

import numpy as np

from sweeper.confirm import unpack
from sweeper.report.decision import Gain, estimate_gain, sequential_rule
from sweeper.spec import Spec


def confirmed_gain(confirmation: dict[str, list[dict]], spec: Spec, test_labels, methods: int = 1) -> Gain:
    """The gain of paired confirmation runs, its estimate (both noise sources) and the rule's look
    (``methods``: how many fine-tuning methods share the rule's error, `decision.sequential_rule`)."""
    sign = 1.0 if spec.study.direction == "maximize" else -1.0
    metric = spec.study.metric
    fe, ft = confirmation["feature_extraction"], confirmation["fine_tuning"]
    differences = [sign * (b["test"][metric] - a["test"][metric]) for a, b in zip(fe, ft, strict=True)]
    estimate = None
    if test_labels is not None:

        def stacked(runs, key):
            return np.stack([unpack(run[key]) for run in runs])

        estimate = estimate_gain(
            metric,
            sign,
            np.asarray(test_labels),
            (stacked(fe, "predictions"), stacked(ft, "predictions")),
            (stacked(fe, "losses"), stacked(ft, "losses")),
            differences,
        )
    budget = spec.budget
    rule = sequential_rule(spec.decision.min_gain, budget.confirm_seeds, budget.max_confirm_seeds, methods)
    look = rule.look(estimate) if estimate is not None else None
    return Gain(float(np.mean(differences)), len(differences), estimate, look)


STOPPED = {  # why confirmation stopped adding seeds, by the look's reason
    "clears": "the lower bound cleared min_gain",
    "below": "the upper bound fell below min_gain",
    "straddles_budget_spent": "the seed budget ([budget] max_confirm_seeds) ran out",
    "straddles": "not finished: the interval straddles min_gain and seeds remain",
}


def confirmation_facts(gain: Gain | None) -> dict:
    """The report's fields of the confirmation: seeds, conclusive, why it stopped, the bounds."""
    look = gain.look if gain is not None else None
    estimate = gain.estimate if gain is not None else None
    return {
        "seeds": gain.seeds if gain is not None else 0,
        "conclusive": look.conclusive if look is not None else None,
        "stopped": STOPPED[look.reason_key] if look is not None else None,
        "decision_interval": (look.low, look.high) if look is not None else None,
        "decision_confidence": look.confidence if look is not None else None,
        "seed_share": estimate.seed_share if estimate is not None else None,
    }
