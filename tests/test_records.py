"""The records a trial leaves, read back: its strategy from its params, its seconds and stage
starts from its attributes, studies of earlier versions alike."""

from __future__ import annotations

import os
import socket

import optuna
from optuna.distributions import IntDistribution

from sweeper.records import method_from_params, method_of, seconds_of, stage_starts_of, strategy_of, worker_id


def _trial(blocks: int | None, **attrs):
    params = {} if blocks is None else {"unfrozen_blocks": blocks}
    distributions = {} if blocks is None else {"unfrozen_blocks": IntDistribution(0, 6)}
    return optuna.trial.create_trial(params=params, distributions=distributions, value=0.5, user_attrs=attrs)


def test_the_strategy_is_read_from_the_unfrozen_blocks():
    assert strategy_of(_trial(0)) == "feature_extraction"
    assert strategy_of(_trial(3)) == "fine_tuning"
    assert strategy_of(_trial(None)) is None  # stopped before it had parameters
    assert strategy_of(_trial(None, strategy="fine_tuning")) == "fine_tuning"  # an earlier version's


def test_seconds_are_one_attribute_and_earlier_studies_read_alike():
    now = _trial(0, seconds={"wall": 3.0, "device": 2.0, "bookkeeping": 0.5})
    earlier = _trial(0, wall_seconds=3.0, device_seconds=2.0)
    assert [seconds_of(now, k) for k in ("wall", "device", "bookkeeping")] == [3.0, 2.0, 0.5]
    assert [seconds_of(earlier, k) for k in ("wall", "device", "bookkeeping")] == [3.0, 2.0, 0.0]


def test_stage_starts_are_recorded_by_fine_tuning_trials_and_one_stage_otherwise():
    assert stage_starts_of(_trial(2, stage_starts=[0, 3, 4])) == (0, 3, 4)
    assert stage_starts_of(_trial(0)) == (0,)


def test_a_worker_is_named_by_its_host_and_process():
    assert worker_id() == f"{socket.gethostname()}:{os.getpid()}"
    assert worker_id(42) == f"{socket.gethostname()}:42"


def test_the_method_is_the_method_param_else_the_one_whose_own_params_the_trial_drew():
    assert method_from_params({"unfrozen_blocks": 0}) == "unfreeze"  # feature extraction
    assert method_from_params({"unfrozen_blocks": 2, "lr_ratio": 0.1}) == "unfreeze"  # earlier versions'
    assert (
        method_from_params({"unfrozen_blocks": 2, "method": "layer_decay", "lr_decay": 0.8}) == "layer_decay"
    )
    assert method_from_params({"unfrozen_blocks": 2, "lora_rank": 8, "lora_alpha": 16.0}) == "lora"  # fixed
    assert method_from_params({"unfrozen_blocks": 1, "lr_decay": 0.8}) == "layer_decay"
    assert method_of(_trial(None)) is None and method_of(_trial(3)) == "unfreeze"
