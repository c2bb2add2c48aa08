"""The frozen-prefix cache: content-addressed, written atomically, shared by processes, bounded,
and invisible in the results (same seed, same metric, with or without it)."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import optuna
import pytest
import torch

from sweeper.cache import PrefixCache
from sweeper.config import TrialConfig
from sweeper.digests import tensor_digest
from sweeper.runtime import StudyRuntime, prepare
from sweeper.spec import load_spec
from sweeper.tracking import StudyTracker
from sweeper.trial import run_trial
from tests.conftest import write_spec


def _states(n: int = 8, width: int = 4) -> dict[str, torch.Tensor]:
    return {"x": torch.arange(n * width, dtype=torch.float32).reshape(n, width)}


class _Counter:
    def __init__(self, states):
        self.calls = 0
        self.states = states

    def __call__(self):
        self.calls += 1
        return self.states


def test_an_entry_is_computed_once_and_read_back_by_another_process_cache(tmp_path):
    compute = _Counter(_states())
    first = PrefixCache(tmp_path)
    torch.testing.assert_close(first.get({"cut": 3}, compute), _states())
    second = PrefixCache(tmp_path)  # as another worker on this machine would
    torch.testing.assert_close(second.get({"cut": 3}, compute), _states())
    assert compute.calls == 1
    assert len(list(tmp_path.glob("*/*.safetensors"))) == 1
    assert not list(tmp_path.glob("*/.tmp-*"))  # no half-written file left behind


def test_different_inputs_get_different_entries(tmp_path):
    cache = PrefixCache(tmp_path)
    cache.get({"cut": 3, "model": "a"}, _Counter(_states()))
    cache.get({"cut": 3, "model": "b"}, _Counter(_states()))
    cache.get({"cut": 4, "model": "a"}, _Counter(_states()))
    assert len(list(tmp_path.glob("*/*.safetensors"))) == 3


def test_the_least_recently_used_entries_go_past_the_size_bound(tmp_path):
    one_entry = tmp_path / "probe"
    PrefixCache(one_entry).get({"k": 0}, _Counter(_states()))
    size = next(one_entry.glob("*/*.safetensors")).stat().st_size
    cache = PrefixCache(tmp_path / "c", max_bytes=int(size * 2.5), memory_bytes=0)
    for k in range(4):
        cache.get({"k": k}, _Counter(_states()))
    kept = list((tmp_path / "c").glob("*/*.safetensors"))
    assert len(kept) == 2
    again = _Counter(_states())
    cache.get({"k": 3}, again)  # the newest survived
    assert again.calls == 0
    cache.get({"k": 0}, again)  # the oldest was evicted
    assert again.calls == 1


def test_a_corrupt_entry_is_recomputed_not_trusted(tmp_path):
    PrefixCache(tmp_path).get({"k": 1}, _Counter(_states()))
    entry = next(tmp_path.glob("*/*.safetensors"))
    entry.write_bytes(b"garbage")
    compute = _Counter(_states())
    torch.testing.assert_close(PrefixCache(tmp_path).get({"k": 1}, compute), _states())
    assert compute.calls == 1


def _slow_compute_in_another_process(directory: str, marker: str) -> None:
    def compute():
        with open(marker, "a") as f:
            f.write("x")
        import time

        time.sleep(0.5)
        return _states()

    PrefixCache(Path(directory)).get({"shared": True}, compute)


def test_concurrent_workers_compute_a_shared_entry_once(tmp_path):
    marker = tmp_path / "computed"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_slow_compute_in_another_process, args=(str(tmp_path / "c"), str(marker)))
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert marker.read_text() == "x"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache-spec")
    spec = load_spec(write_spec(folder, search={"head_epochs": 2, "stage_epochs": 2}))
    return prepare(spec, "cpu")


def _runtime(prepared, cache: PrefixCache | None) -> StudyRuntime:
    return StudyRuntime(prepared, cache)


@pytest.mark.parametrize("blocks", [0, 1])
def test_the_same_seed_gives_the_same_metric_with_and_without_the_cache(
    prepared, tmp_path, tracking_uri, blocks
):
    config = TrialConfig(blocks, 0.005, 2, *((0.1, 2, 1) if blocks else ()))
    values = {}
    for name, cache in (("cached", PrefixCache(tmp_path / "cache")), ("uncached", None)):
        runtime = _runtime(prepared, cache)
        study = optuna.create_study(direction="maximize")
        trial = study.ask()
        run_trial(runtime, StudyTracker(tracking_uri, prepared.spec.study.name), trial, config)
        values[name] = study._storage.get_trial(trial._trial_id).intermediate_values
    assert values["cached"].keys() == values["uncached"].keys()
    for step in values["cached"]:
        assert values["cached"][step] == pytest.approx(values["uncached"][step], abs=1e-6)


def test_random_augmentation_turns_caching_off_and_says_so(prepared, tracking_uri, caplog):
    from torchvision.transforms import v2

    pretrained, data = prepared.pretrained, prepared.data
    runtime = _runtime(prepared, PrefixCache(None))
    data._transform = v2.Compose([v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32)])
    try:
        with caplog.at_level(logging.WARNING):
            source = runtime.source(pretrained.build(3), "train", 6)
    finally:
        data._transform = None
    assert source._states is None  # computed live, batch by batch
    assert "RandomHorizontalFlip" in caplog.text


def test_the_cli_caches_in_cache_dir_and_not_with_no_cache(workdir, tracking_uri, monkeypatch):
    from sweeper.cli import main

    spec = write_spec(workdir)
    storage = f"sqlite:///{workdir / 'sweeper.db'}"
    common = ["--trials", "1", "--storage", storage, "--tracking-uri", tracking_uri]
    assert main(["study", str(spec), *common, "--cache-dir", str(workdir / "here")]) == 0
    assert list((workdir / "here").glob("*/*.safetensors"))

    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(workdir / "default"))
    assert (
        main(
            [
                "study",
                str(spec),
                "--trials",
                "2",
                "--storage",
                storage,
                "--tracking-uri",
                tracking_uri,
                "--no-cache",
            ]
        )
        == 0
    )
    assert not (workdir / "default").exists() or not list((workdir / "default").glob("*/*.safetensors"))


def test_a_model_copies_only_the_blocks_it_may_train(prepared):
    pretrained = prepared.pretrained
    original = pretrained.family.cut(pretrained.module, 3)
    model = pretrained.build(3, trainable_from=4)
    assert model.stem.embeddings is original.stem.embeddings
    assert all(model.blocks[i].layer is original.blocks[i].layer for i in range(4))
    assert all(model.blocks[i].layer is not original.blocks[i].layer for i in (4, 5))
    copied = dict(model.blocks[5].named_parameters())
    for name, weight in original.blocks[5].named_parameters():
        assert torch.equal(copied[name], weight) and copied[name] is not weight


def test_fine_tuning_trials_leave_the_shared_pretrained_weights_untouched(prepared, tracking_uri):
    pretrained = prepared.pretrained
    before = tensor_digest(dict(pretrained.module.state_dict()))
    runtime = _runtime(prepared, PrefixCache(None))
    tracker = StudyTracker(tracking_uri, prepared.spec.study.name)
    study = optuna.create_study(direction="maximize")
    for config in (TrialConfig(2, 0.005, 1, 0.5, 1, 1), TrialConfig(0, 0.005, 1)):
        trial = study.ask()
        study.tell(trial, run_trial(runtime, tracker, trial, config))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert tensor_digest(dict(pretrained.module.state_dict())) == before


def test_the_evaluation_hands_over_the_features_a_second_pass_would_compute(prepared, tracking_uri):
    from sweeper.methods import StagedUnfreezing
    from sweeper.param_groups import build_param_groups, make_optimizer
    from sweeper.similarity import pooled_features
    from sweeper.train import TrainSettings, train_staged

    spec, pretrained = prepared.spec, prepared.pretrained
    runtime = _runtime(prepared, PrefixCache(None))
    plan = TrialConfig(1, 0.005, 1, 0.5, 1, 1).plan(pretrained.num_blocks)
    model = pretrained.build(runtime.num_classes, trainable_from=plan.cut)
    results = train_staged(
        model,
        plan,
        make_optimizer(build_param_groups(model, plan, 0.5), 0.005, 0.0),
        0.005,
        lambda start: (runtime.source(model, "train", start), runtime.source(model, "val", start)),
        TrainSettings(spec.train.batch_size),
        lambda _result: None,
        features_at=frozenset({1}),
        method=StagedUnfreezing(),
    )
    assert results[0].val_features is None  # the head-only epoch: not asked for
    again = pooled_features(model, runtime.source(model, "val", plan.cut), 64, torch.device("cpu"))
    assert results[1].val_features.shape == again.shape
    assert torch.allclose(results[1].val_features, again, atol=1e-5)
