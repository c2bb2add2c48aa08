"""How a study's trials divide between feature extraction and fine-tuning: a plain value from the
spec (no Optuna, no torch: the command line resolves it before anything heavy is imported)."""

from __future__ import annotations

from dataclasses import dataclass

from sweeper.spec import Spec, bounds


@dataclass(frozen=True)
class ArmBudget:
    """How a study's trials divide between the arms.

    Feature extraction trains a head on cached features: a trial costs seconds, against minutes
    for fine-tuning. So where the space holds both arms and ``[budget] fe_trials`` > 0, feature
    extraction gets its own trials, run first (its head_lr and head_epochs tuned as fully as
    fine-tuning's parameters), and ``[budget] trials`` are all fine-tuning trials, judged against a
    tuned head. Otherwise (``fe_trials = 0``, or one arm only) the arms share ``trials``.
    """

    fe_trials: int  # 0: the arms share one budget
    ft_trials: int

    @classmethod
    def of(cls, spec: Spec, trials: int | None = None) -> ArmBudget:
        """``trials`` overrides ``[budget] trials`` (the ``--trials`` flag)."""
        trials = trials or spec.budget.trials
        low, high = bounds(spec.search.unfrozen_blocks)
        if spec.budget.fe_trials and low == 0 < high:
            return cls(spec.budget.fe_trials, trials)
        return cls(0, trials)

    @property
    def separate(self) -> bool:
        return self.fe_trials > 0

    @property
    def total(self) -> int:
        """The study's total of finished trials."""
        return self.fe_trials + self.ft_trials
