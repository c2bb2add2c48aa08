"""A study seen as one arm's trials (feature extraction or fine-tuning): what the arm sampler
models each arm on, and what the median pruner judges a fine-tuning trial against."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from sweeper.records import Strategy, TrialAttr, strategy_for


class ArmStudy(optuna.study.Study):
    """The study as one arm's trials."""

    def __init__(self, study: optuna.Study, arm: Strategy) -> None:
        # the study itself, filtered: no lookups of its id and directions at every suggestion, and
        # its per-trial cache of the trials (one read per trial, as TPE has on the study)
        vars(self).update(vars(study))
        self._arm = arm

    def _get_trials(self, deepcopy=True, states=None, use_cache=False) -> list[FrozenTrial]:
        trials = super()._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if arm_of(t) == self._arm]

    def get_trials(self, deepcopy=True, states=None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)


def arm_of(trial: FrozenTrial) -> Strategy | None:
    """The arm a trial was claimed for, else the strategy of its parameters."""
    if TrialAttr.ARM in trial.user_attrs:
        return trial.user_attrs[TrialAttr.ARM]
    if "unfrozen_blocks" in trial.params:
        return strategy_for(trial.params["unfrozen_blocks"])
    return None
