"""The study's pruner: which fine-tuning trials stop early, judged against fine-tuning trials only.

Feature-extraction trials report every epoch too (their curves are in the report), and they are
many and cheap: 24 of them in the default study, run first, their head epochs at steps 0 to 3, each
near 0.79 by step 2. Optuna's median pruner compares a trial at a step with every completed trial
that reported there, so a fine-tuning trial with two head epochs was judged at its first
fine-tuning epoch (step 2) against the tuned heads. In a three-method default-data study the best
trial (LoRA, 0.854 at the end) stood at 0.762 after its head epochs, a low head_lr's head: a first
fine-tuning epoch below 0.79 would have stopped it. `FineTuningOnly` shows the pruner the
fine-tuning trials alone; among them the median rule is Optuna's, unchanged.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from sweeper.arm_study import ArmStudy
from sweeper.records import FINE_TUNING
from sweeper.search_space import max_total_epochs
from sweeper.spec import Spec


def make_pruner(spec: Spec) -> optuna.pruners.BasePruner:
    if spec.budget.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.budget.pruner == "median":
        # a trial is judged at a step only against 3 others there: else the first fine-tuning trial
        # to reach a step (the strong full fine-tuning baseline) would prune every later one
        return FineTuningOnly(
            optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1, n_min_trials=3)
        )
    # successive halving compares only trials that asked it at a rung: feature-extraction trials
    # never ask (trial.py judges fine-tuning stages alone), so they are not among them
    return optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=max_total_epochs(spec.search), reduction_factor=3
    )


class FineTuningOnly(optuna.pruners.BasePruner):
    """A percentile (median) pruner that judges a trial against the fine-tuning trials alone.

    Args:
        pruner: the pruner to ask, shown a study whose trials are its fine-tuning ones.

    Example:
        >>> pruner = FineTuningOnly(optuna.pruners.MedianPruner(n_startup_trials=3))
        >>> study = optuna.create_study(direction="maximize", pruner=pruner)
    """

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.pruner.prune(ArmStudy(study, FINE_TUNING), trial)
