"""A study end to end on real MiniLM, real words, a real SQLite study DB and a real MLflow store:
the trial total, resume, a refused change of search space, the pruner setting, and a trial's model
freed before the next trial."""

from __future__ import annotations

import signal

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeper.commands import run_study
from sweeper.errors import UserError
from sweeper.interrupts import Interrupted
from sweeper.records import TrialAttr, worker_id
from sweeper.recovery import fail_trials_of_workers
from sweeper.settings import Options
from sweeper.storage import StudyLock, make_storage
from sweeper.study import FINISHED, run_trials
from sweeper.tracking import StudyTracker
from sweeper.trial import make_objective
from tests.conftest import runtime_for, write_spec


def _options(workdir, tracking_uri, **extra) -> Options:
    return Options(
        storage=f"sqlite:///{workdir / 'sweeper.db'}",
        tracking_uri=tracking_uri,
        out=workdir / "reports",
        **extra,
    )


def _study(workdir, name="tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'sweeper.db'}")


@pytest.mark.slow
def test_feature_extraction_is_tuned_first_on_its_own_budget_then_fine_tuning_gets_its_trials(
    workdir, tracking_uri
):
    spec = write_spec(workdir, budget={"trials": 2, "fe_trials": 3}, search={"head_epochs": [1, 2]})
    run_study(spec, _options(workdir, tracking_uri))
    trials = _study(workdir).get_trials(states=FINISHED)
    assert len(trials) == 3 + 2  # fe_trials do not eat into [budget] trials
    blocks = [t.params["unfrozen_blocks"] for t in sorted(trials, key=lambda t: t.number)]
    assert (
        blocks[:3] == [0, 0, 0] and blocks[3] == 2 and blocks[4] >= 1
    )  # the fine-tuning baseline opens its arm
    assert [t.user_attrs["sweeper.arm"] for t in trials] == ["feature_extraction"] * 3 + ["fine_tuning"] * 2
    # the head of feature extraction was searched, not only its baseline's
    assert len({t.params["head_lr"] for t in trials[:3]}) == 3
    run_study(spec, _options(workdir, tracking_uri, trials=3))  # --trials: one more fine-tuning trial
    more = _study(workdir).get_trials(states=FINISHED)
    assert len(more) == 6 and more[-1].params["unfrozen_blocks"] >= 1


@pytest.mark.slow
def test_each_searched_method_opens_the_fine_tuning_arm_with_a_completed_baseline(workdir, tracking_uri):
    spec = write_spec(
        workdir,
        search={"method": ["layer_decay", "lora", "unfreeze"], "lora_rank": [2, 8]},
        budget={"trials": 3, "fe_trials": 1, "pruner": "median"},
    )
    run_study(spec, _options(workdir, tracking_uri))
    tuned = [t for t in _study(workdir).trials if t.params["unfrozen_blocks"] > 0]
    # every method's baseline runs (unfreeze first) and completes: the pruner waits for three
    assert [t.params["method"] for t in tuned] == ["unfreeze", "layer_decay", "lora"]
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["sweeper.baseline"] for t in tuned)


@pytest.mark.slow
def test_study_runs_the_baselines_first_then_continues_to_the_total_without_duplicates(workdir, tracking_uri):
    spec = write_spec(workdir)
    run_study(spec, _options(workdir, tracking_uri, trials=2))
    study = _study(workdir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    # the enqueued baselines: pure feature extraction, then full fine-tuning
    assert study.trials[0].params["unfrozen_blocks"] == 0
    assert study.trials[1].params["unfrozen_blocks"] == 2

    run_study(spec, _options(workdir, tracking_uri, trials=3))  # continue: one more trial
    study = _study(workdir)
    assert len(study.get_trials(states=FINISHED)) == 3
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert (
        sum("sweeper.baseline" in t.system_attrs or "sweeper.baseline" in t.user_attrs for t in study.trials)
        == 2
    )

    run_study(spec, _options(workdir, tracking_uri, trials=3))  # budget reached: nothing runs
    assert len(_study(workdir).trials) == 3
    runs = MlflowClient(tracking_uri).search_runs(
        [MlflowClient(tracking_uri).get_experiment_by_name("tiny").experiment_id],
        filter_string="tags.`optuna.study` = 'tiny'",
    )
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs if "optuna.trial" in r.data.tags) == [
        0,
        1,
        2,
    ]


@pytest.mark.slow
def test_a_changed_search_space_is_refused_and_nothing_is_added(workdir, tracking_uri):
    spec = write_spec(workdir)
    run_study(spec, _options(workdir, tracking_uri, trials=1))
    before = len(_study(workdir).trials)  # the finished FE baseline and the waiting FT baseline
    changed = write_spec(workdir, search={"head_lr": [0.0001, 0.01]})
    assert changed == spec  # same file, new content
    with pytest.raises(UserError) as caught:
        run_study(spec, _options(workdir, tracking_uri, trials=3))
    assert "[search] head_lr was [0.001, 0.01], now [0.0001, 0.01]" in str(caught.value)
    assert "new value" in str(caught.value)
    assert len(_study(workdir).trials) == before


@pytest.mark.slow
@pytest.mark.parametrize("lower", [1.5, 0.0], ids=["pruned", "completed"])
def test_a_trials_model_is_freed_before_the_next_trial(workdir, tracking_uri, lower):
    import gc

    from sweeper.backbones.base import BlockModel
    from sweeper.storage import StudyLock, make_storage
    from sweeper.study import run_trials

    runtime = runtime_for(write_spec(workdir, search={"head_epochs": 1}))
    objective = make_objective(runtime, StudyTracker(tracking_uri, "gc"))
    storage = make_storage(f"sqlite:///{workdir / 'gc.db'}")
    study = optuna.create_study(
        study_name="gc",
        storage=storage,
        direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=lower),
    )
    # a fine-tuning trial (feature extraction is never pruned), judged after its first block unfreezes
    study.enqueue_trial({"unfrozen_blocks": 1, "lr_ratio": 0.05, "stage_epochs": 1, "blocks_per_stage": 1})

    def alive() -> list[BlockModel]:
        return [o for o in gc.get_objects() if isinstance(o, BlockModel)]

    before = len(alive())
    # with the collector off, a completed trial's model goes with its last reference, and a pruned
    # one (held in a cycle by its traceback) only by sweeper's own collection
    gc.disable()
    try:
        run_trials(study, objective, 1, StudyLock(storage, "gc"))
        left = len(alive())
    finally:
        gc.enable()
    assert study.trials[0].state == (TrialState.PRUNED if lower else TrialState.COMPLETE)
    assert left == before


def _mean_blocks_drawn_for_fine_tuning(sampler) -> float:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    blocks = optuna.distributions.IntDistribution(0, 6)
    arms = [("feature_extraction", 0, 0.90 + i / 1000) for i in range(20)]  # better than any below
    arms += [("fine_tuning", u, v) for u, v in [(1, 0.79), (2, 0.80), (5, 0.85), (6, 0.86), (6, 0.87)]]
    for arm, unfrozen, value in arms:
        study.add_trial(
            optuna.trial.create_trial(
                params={"unfrozen_blocks": unfrozen},
                distributions={"unfrozen_blocks": blocks},
                value=value,
                user_attrs={"sweeper.arm": arm},
            )
        )
    drawn = []
    for _ in range(20):
        trial = study.ask()
        trial.set_user_attr("sweeper.arm", "fine_tuning")
        drawn.append(trial.suggest_int("unfrozen_blocks", 1, 6))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return sum(drawn) / len(drawn)


def test_the_sampler_models_each_arm_on_its_own_trials():
    from sweeper.study import ArmSampler

    # over all trials, the many feature-extraction ones (unfrozen_blocks = 0) pull towards 1 block;
    # over the fine-tuning trials alone, towards the many blocks that did best there
    mixed = _mean_blocks_drawn_for_fine_tuning(
        optuna.samplers.TPESampler(seed=0, n_startup_trials=3, multivariate=False)
    )
    by_arm = _mean_blocks_drawn_for_fine_tuning(ArmSampler(seed=0, n_startup_trials=3))
    assert mixed < 2.5 < 3.5 < by_arm


class _InterruptedAsOptunaCreatesTheTrial(optuna.samplers.RandomSampler):
    """SIGTERM landing after Optuna created the trial (RUNNING in the DB), before the objective
    ran: Optuna calls ``before_trial`` in that window, as it starts the heartbeat thread there."""

    def before_trial(self, study, trial):
        raise Interrupted(signal.SIGTERM)


def test_an_interrupt_before_the_objective_leaves_no_trial_running_unowned(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'sweeper.db'}")
    study = optuna.create_study(
        study_name="s", storage=storage, sampler=_InterruptedAsOptunaCreatesTheTrial()
    )
    lock = StudyLock(storage, "s")
    with pytest.raises(Interrupted):
        run_trials(study, lambda trial: 1.0, 3, lock, poll_seconds=0.01)

    [trial] = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.RUNNING
    assert trial.user_attrs[TrialAttr.WORKER] == worker_id()  # so the worker's interrupt path finds it
    assert fail_trials_of_workers(study, {worker_id(): "Interrupted: SIGTERM"}, None) == [trial.number]
    assert StudyLock(storage, "s").acquire(wait=False)  # and the lock was let go
