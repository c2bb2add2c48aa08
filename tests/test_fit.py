"""One training path: trials and confirmation runs both train through `fit`, so a trial's
configuration re-run by the confirmation path with the trial's seed gives the trial's values;
seeds are derived in one place; the caller's step is timed as bookkeeping, not training; the
pretrained weights every run shares never move."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from sweeper import fit as fit_module
from sweeper.config import TrialConfig
from sweeper.confirm import run_once
from sweeper.fit import Timing, _build, confirmation_seed, fit, trial_seed
from sweeper.tracking import StudyTracker
from sweeper.trial import run_trial
from tests.conftest import runtime_for, write_spec

FINE_TUNING = TrialConfig(2, 0.005, 1, lr_ratio=0.1, stage_epochs=1, blocks_per_stage=1)
FEATURE_EXTRACTION = TrialConfig(0, 0.005, 2)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    # a spec seed other than 0: a confirmation that ignored it would not match the trial
    folder = tmp_path_factory.mktemp("fit")
    return runtime_for(write_spec(folder, study={"name": "tiny", "seed": 7}, per_class=20))


@pytest.mark.parametrize("config", [FEATURE_EXTRACTION, FINE_TUNING], ids=lambda c: c.strategy)
def test_a_trial_re_run_by_the_confirmation_path_with_its_seed_gives_the_trial_s_values(
    runtime, tracking_uri, config
):
    study = optuna.create_study(direction="maximize")
    study.ask()  # trial 0: the trial below is trial 1, so its seed is not the default 0
    trial = study.ask()
    value = run_trial(runtime, StudyTracker(tracking_uri, "tiny"), trial, config)
    recorded = study.trials[1]

    confirmed = run_once(runtime, config, trial_seed(trial.number))

    assert confirmed["val"][runtime.spec.study.metric] == value
    rerun = fit(runtime, config, trial_seed(trial.number))
    assert [e.val["accuracy"] for e in rerun.epochs] == [
        recorded.intermediate_values[e.epoch] for e in rerun.epochs
    ]
    if config.unfrozen_blocks:  # the forgetting figures too
        assert [f["cka"] for f in rerun.forgetting] == [f["cka"] for f in recorded.user_attrs["forgetting"]]


def test_the_seed_decides_the_run(runtime):
    first, again = fit(runtime, FEATURE_EXTRACTION, 0), fit(runtime, FEATURE_EXTRACTION, 0)
    other = fit(runtime, FEATURE_EXTRACTION, 1)
    assert torch.equal(first.model.head.weight, again.model.head.weight)
    assert not torch.equal(first.model.head.weight, other.model.head.weight)


def test_trial_and_confirmation_seeds_never_meet_and_follow_the_spec_seed(runtime, monkeypatch):
    assert {trial_seed(n) for n in range(10_000)}.isdisjoint(confirmation_seed(i) for i in range(20))
    seen = []
    train_staged = fit_module.train_staged

    def recording(model, plan, optimizer, head_lr, sources_at, settings, *rest, **named):
        seen.append(settings.seed)
        return train_staged(model, plan, optimizer, head_lr, sources_at, settings, *rest, **named)

    monkeypatch.setattr(fit_module, "train_staged", recording)
    fit(runtime, FEATURE_EXTRACTION, confirmation_seed(0))
    # the batch order of a confirmation run follows the spec's seed (7), as a trial's does
    assert seen == [runtime.spec.study.seed + confirmation_seed(0)]


class _Clock:
    """fit's clock, moved by hand: training takes no time on it, the caller's step 10 s."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_the_caller_s_step_is_timed_as_bookkeeping_not_as_training(runtime, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(fit_module, "time", clock)

    def step(_epoch):
        clock.now += 10.0

    timing = Timing()
    fit(runtime, FEATURE_EXTRACTION, 0, on_epoch=step, timing=timing)
    assert (timing.bookkeeping, timing.train, timing.prefix) == (20.0, 0.0, 0.0)  # two epochs


def test_a_run_that_stops_early_keeps_the_seconds_it_spent(runtime):
    timing = Timing()

    def stop(_epoch):
        raise optuna.TrialPruned("stopped")

    with pytest.raises(optuna.TrialPruned):
        fit(runtime, FEATURE_EXTRACTION, 0, on_epoch=stop, timing=timing)
    assert timing.train > 0 and timing.device == timing.prefix + timing.train


def test_compile_applies_to_the_blocks_a_run_trains_in_every_path(tmp_path):
    runtime = runtime_for(write_spec(tmp_path, train={"compile": True}, per_class=5))
    plan = FINE_TUNING.plan(runtime.pretrained.num_blocks)
    model = _build(runtime, plan)  # what trials and confirmation runs both train
    compiled = [getattr(block, "_compiled_call_impl", None) is not None for block in model.blocks]
    assert compiled == [False] * plan.cut + [True] * plan.unfrozen_blocks


def test_the_pretrained_weights_the_runs_share_never_move(runtime):
    before = {k: v.clone() for k, v in runtime.pretrained.module.state_dict().items()}
    fit(runtime, TrialConfig(2, 0.01, 1, lr_ratio=1.0, stage_epochs=1, blocks_per_stage=2), 0)
    after = runtime.pretrained.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", ["unfreeze", "layer_decay", "lora"])
def test_every_fine_tuning_stage_trains_from_the_cached_states_entering_its_lowest_trained_block(
    runtime, monkeypatch, method
):
    own = {"layer_decay": {"lr_decay": 0.8}, "lora": {"lr_ratio": None, "lora_rank": 4, "lora_alpha": 8.0}}
    config = dataclasses.replace(FINE_TUNING, method=method, **own.get(method, {}))
    plan = config.plan(runtime.pretrained.num_blocks)
    runtime.pretrained_features("val")  # once per runtime (for the forgetting figures), not per run
    sources = []
    source = runtime.source
    monkeypatch.setattr(runtime, "source", lambda *args: sources.append(source(*args)) or sources[-1])
    fitted = fit(runtime, config, 0)
    lowest = [min(stage.trainable_blocks) for stage in plan.stages[1:]]
    assert lowest == ([5, 4] if method == "unfreeze" else [4, 4])  # MiniLM's 6 blocks, the top 2 trained
    # stage 0 trains on the pooled features (after block 5 and the neck: 7), each later stage from
    # the states entering its lowest trained block, train and val split, all from the cache
    assert [s.start for s in sources] == [7, 7] + [c for c in lowest for _ in ("train", "val")]
    assert all(s._states is not None for s in sources)
    trained = [fitted.model.head, *fitted.model.blocks[4:]]
    assert fitted.trainable_params == sum(
        p.numel() for part in trained for n, p in part.named_parameters() if method != "lora" or "lora_" in n
    ) + (sum(p.numel() for p in fitted.model.head.parameters()) if method == "lora" else 0)
