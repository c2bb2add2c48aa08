"""The Optuna side of a study: sampler, pruner, enqueued baselines, and the run loop that stops at
exactly the study's total of finished trials (complete + pruned), however many workers run it and
whatever dies. The storage and the study lock live in storage.py."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from sweeper.arm_study import ArmStudy, arm_of
from sweeper.budget import ArmBudget
from sweeper.identity import StudyIdentity, record_or_check
from sweeper.pruning import make_pruner
from sweeper.records import (
    FEATURE_EXTRACTION,
    FINE_TUNING,
    Strategy,
    StudyAttr,
    TrialAttr,
    strategy_for,
    worker_id,
)
from sweeper.recovery import name_the_trial_being_claimed, reap_stale_trials
from sweeper.search_space import baseline_configs, optuna_params
from sweeper.spec import Spec
from sweeper.storage import StudyLock

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# failures in a row after which a worker gives up: its setup is broken, not one trial
FAILURES_IN_A_ROW_LIMIT = 3


def open_study(
    spec: Spec,
    storage: optuna.storages.BaseStorage,
    lock: StudyLock,
    identity: StudyIdentity,
    sampler_salt: int = 0,
):
    """Create or continue the spec's study; refuse one whose identity (search space, data,
    weights) has changed.

    Under the study lock, so that workers starting together create one study and queue the
    baselines once (where each arm has its budget, only feature extraction's: fine-tuning's is
    queued when its arm starts, `ArmQueue`). ``sampler_salt`` keeps parallel workers from drawing the same random start-up
    parameters (0 for a single process: a continued study stays reproducible).
    """
    with lock:
        existing = _existing_trial_count(storage, spec.study.name)
        sampler = ArmSampler(
            # a continued study must not replay the random start-up of the first run
            seed=(spec.study.seed + existing + sampler_salt) % 2**32,
            n_startup_trials=max(3, min(10, spec.budget.trials // 4)),
            constant_liar=True,
        )
        study = optuna.create_study(
            study_name=spec.study.name,
            storage=storage,
            sampler=sampler,
            pruner=make_pruner(spec),
            direction=spec.study.direction,
            load_if_exists=True,
        )
        record_or_check(study, spec, identity)
        if not study.trials:
            separate = ArmBudget.of(spec).separate
            for config in baseline_configs(spec.search):
                # fine-tuning's are queued when its arm starts (`ArmQueue`); any a budget leaves
                # waiting run first when the study is continued
                if not (separate and config.strategy == FINE_TUNING):
                    _enqueue_baseline(study, config, spec.search)
    return study


class ArmSampler(optuna.samplers.TPESampler):
    """TPE that models each arm on its own trials, where each arm has its budget.

    A trial claimed for an arm (``TrialAttr.ARM``) is sampled from that arm's trials only: the
    fine-tuning trials are not drawn towards few unfrozen blocks by the many feature-extraction
    trials before them (seen as ``unfrozen_blocks = 0``), and each arm has its own random start-up.
    Optuna's Hyperband pruner filters the study it hands on in the same way (``_BracketStudy``).
    Independent TPE (Optuna 4's default; 5 defaults to multivariate): each parameter is drawn at
    its ``suggest_*``, after the trial was claimed for its arm, from that arm's trials.
    """

    def __init__(self, **options) -> None:
        super().__init__(multivariate=False, **options)

    def sample_independent(self, study, trial, param_name, param_distribution):
        arm = trial.user_attrs.get(TrialAttr.ARM)
        view = ArmStudy(study, arm) if arm is not None else study
        return super().sample_independent(view, trial, param_name, param_distribution)


def _enqueue_baseline(study: optuna.Study, config, search) -> None:
    study.enqueue_trial(
        optuna_params(config, search), user_attrs={TrialAttr.BASELINE: config.strategy}, skip_if_exists=True
    )


class ArmQueue:
    """Which arm the next trial is for, where each arm has its own budget (`ArmBudget`): feature
    extraction until its trials are claimed, then fine-tuning, whose baseline is queued then.
    Asked under the study lock, so that workers claiming together agree."""

    def __init__(self, spec: Spec, arms: ArmBudget) -> None:
        self.search = spec.search
        self.arms = arms

    def next_arm(self, study: optuna.Study, trials: list[FrozenTrial] | None = None) -> Strategy | None:
        """``trials``: the study's trials, read under the lock (else read here)."""
        if not self.arms.separate:
            return None
        trials = study.get_trials(deepcopy=False) if trials is None else trials
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        fixed = waiting[0].system_attrs.get("fixed_params", {}) if waiting else {}
        if "unfrozen_blocks" in fixed:  # the next trial is a queued one (a baseline, a retry)
            return strategy_for(fixed["unfrozen_blocks"])
        claimed = [t for t in trials if t.state in (*FINISHED, TrialState.RUNNING)]
        if sum(arm_of(t) == FEATURE_EXTRACTION for t in claimed) < self.arms.fe_trials:
            return FEATURE_EXTRACTION
        if not study.user_attrs.get(StudyAttr.FT_BASELINE_QUEUED):
            for config in baseline_configs(self.search):  # one per method
                if config.strategy == FINE_TUNING:
                    _enqueue_baseline(study, config, self.search)
            study.set_user_attr(StudyAttr.FT_BASELINE_QUEUED, True)
        return FINE_TUNING


def _existing_trial_count(storage, name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    total_trials: int,
    lock: StudyLock,
    timeout: float | None = None,
    poll_seconds: float = 5.0,
    before_each: Callable[[], None] = lambda: None,
    arms: ArmQueue | None = None,
) -> int:
    """Run trials here until the study holds exactly ``total_trials`` finished ones; returns how
    many ran here.

    Optuna's MaxTrialsCallback counts after a trial ends, so concurrent workers overshoot. Here a
    worker claims a trial only while finished + running trials fall short of the total, checked and
    claimed under the study lock. When the missing trials are all running elsewhere it waits: one of
    them may fail, or its worker die (its heartbeats stop), and need a replacement; it looks again
    every ``poll_seconds``. ``before_each`` runs before each look (it may raise to stop).
    ``arms`` says which arm each claimed trial is for (its ``TrialAttr.ARM``).
    """
    failures = _RepeatedFailures(FAILURES_IN_A_ROW_LIMIT)
    deadline = None if timeout is None else time.monotonic() + timeout
    ran = 0
    # What exists now (model, data, libraries: some 500k objects) lives until the end: the
    # collections during the trials skip it, and take milliseconds instead of a third of a second
    gc.collect(generation=1)
    gc.freeze()
    try:
        while deadline is None or time.monotonic() < deadline:
            before_each()
            with lock:
                reap_stale_trials(study)
                trials = study.get_trials(deepcopy=False)  # one read: the counts and the next arm
                finished, running = _finished_and_running(trials)
                if finished >= total_trials:
                    break
                if finished + running < total_trials:
                    _run_one_trial(study, objective, lock, failures, arms, trials)
                    ran += 1
                    continue
            time.sleep(poll_seconds)
        return ran
    finally:
        gc.unfreeze()


def _finished_and_running(trials: list[FrozenTrial]) -> tuple[int, int]:
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return sum(t.state in FINISHED for t in trials), running


def _run_one_trial(
    study: optuna.Study,
    objective,
    lock: StudyLock,
    failures: _RepeatedFailures,
    arms: ArmQueue | None,
    trials: list[FrozenTrial],
) -> None:
    claimed: list[int] = []
    arm = arms.next_arm(study, trials) if arms is not None else None

    def objective_once_claimed(trial: optuna.Trial) -> float:
        # RUNNING now, counted by all (with its arm); named before the lock goes (see recovery)
        trial.set_user_attr(TrialAttr.WORKER, worker_id())
        claimed.append(trial.number)
        if arm is not None:
            trial.set_user_attr(TrialAttr.ARM, arm)
        lock.release()
        return objective(trial)

    try:
        study.optimize(
            objective_once_claimed, n_trials=1, catch=(Exception,), callbacks=[failures], gc_after_trial=False
        )
    except KeyboardInterrupt:
        if not claimed:
            name_the_trial_being_claimed(study)
        raise
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        if not claimed or _state_of(study, claimed[0]) != TrialState.FAIL:
            raise
        # this worker was silent past the grace period (suspended, cut off) and another one
        # failed its trial as stale and queued it again; carry on with the next
        log.warning("trial %d was failed by another worker while it ran here", claimed[0])
    if failures.in_a_row or failures.last_state == TrialState.PRUNED:
        # a completed trial's model goes with its last reference; one that raised is held in a
        # reference cycle by its traceback (and an out-of-memory failure leaves cached blocks)
        _free_memory()
    if failures.in_a_row >= failures.limit:
        raise TrialsKeepFailing(failures.limit, failures.last_reason)


def _state_of(study: optuna.Study, number: int) -> TrialState:
    return study.get_trials(deepcopy=False)[number].state


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class _RepeatedFailures:
    """A study whose every trial fails would loop forever: count the failures in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.last_reason = ""
        self.last_state: TrialState | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.last_state = trial.state
        if trial.state == TrialState.FAIL:
            self.in_a_row += 1
            self.last_reason = trial.user_attrs.get(TrialAttr.FAIL_REASON, "")
        else:
            self.in_a_row = 0


class TrialsKeepFailing(RuntimeError):
    def __init__(self, count: int, reason: str) -> None:
        super().__init__(f"{count} trials in a row failed; the last: {reason or 'see the log'}")
