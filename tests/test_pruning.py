"""The pruner judges a fine-tuning trial against fine-tuning trials only: feature-extraction trials
report every epoch (their curves are in the report) but their values are not a fine-tuning
trial's bar. Driven on in-memory Optuna studies, as Optuna's own pruner tests are."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from sweeper.pruning import FineTuningOnly, make_pruner
from sweeper.spec import load_spec
from tests.conftest import write_spec

DISTRIBUTIONS = {"unfrozen_blocks": IntDistribution(0, 6), "head_lr": FloatDistribution(1e-3, 3e-2, log=True)}


def _finished(study: optuna.Study, unfrozen_blocks: int, curve: list[float]) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            params={"unfrozen_blocks": unfrozen_blocks, "head_lr": 0.005},
            distributions=DISTRIBUTIONS,
            value=max(curve),
            intermediate_values=dict(enumerate(curve)),
        )
    )


def _judged_at_step_2(pruner: optuna.pruners.BasePruner, value: float) -> bool:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    # many tuned heads (feature extraction), better at step 2 than fine-tuning dipping as it unfreezes
    for _ in range(8):
        _finished(study, 0, [0.78, 0.785, 0.79])
    for _ in range(3):
        _finished(study, 6, [0.70, 0.72, 0.76, 0.80, 0.85])
    trial = study.ask({"unfrozen_blocks": IntDistribution(0, 6), "head_lr": DISTRIBUTIONS["head_lr"]})
    while trial.params["unfrozen_blocks"] == 0:  # the sampler draws; keep a fine-tuning one
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        trial = study.ask(DISTRIBUTIONS)
    for step, reported in enumerate([0.70, 0.71, value]):
        trial.report(reported, step)
    return trial.should_prune()


def test_a_fine_tuning_trial_is_not_held_to_the_feature_extraction_trials_values():
    # its best so far at step 2 (0.77) beats the fine-tuning trials' median there (0.76)
    assert not _judged_at_step_2(make_pruner_median(), 0.77)
    # the same trial judged against every trial: the tuned heads' 0.79 median stops it
    plain = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1, n_min_trials=3)
    assert _judged_at_step_2(plain, 0.77)


def test_a_fine_tuning_trial_below_the_other_fine_tuning_trials_is_still_pruned():
    assert _judged_at_step_2(make_pruner_median(), 0.75)


def make_pruner_median() -> FineTuningOnly:
    return FineTuningOnly(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1, n_min_trials=3))


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("none", optuna.pruners.NopPruner),
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
    ],
)
def test_the_spec_pruner_setting_picks_the_optuna_pruner(tmp_path, name, kind):
    pruner = make_pruner(load_spec(write_spec(tmp_path, budget={"pruner": name})))
    assert isinstance(pruner.pruner if isinstance(pruner, FineTuningOnly) else pruner, kind)
    assert isinstance(pruner, FineTuningOnly) == (name == "median")
