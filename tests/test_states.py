"""Frozen-prefix states: taken from the cache or computed live, they give the same training; a
state advanced from a lower cached block equals one computed from the input; a random transform
turns caching off, and the log says so; DataLoader worker processes die with the process iterating."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from torchvision.transforms import v2

from sweeper.cache import PrefixCache
from sweeper.config import TrialConfig
from sweeper.runtime import StudyRuntime, prepare
from sweeper.spec import load_spec
from sweeper.states import advance_states, compute_states
from sweeper.tracking import StudyTracker
from sweeper.trial import run_trial
from tests.conftest import write_spec


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("states-spec")
    spec = load_spec(write_spec(folder, search={"head_epochs": 2, "stage_epochs": 2}))
    return prepare(spec, "cpu")


@pytest.mark.parametrize("blocks", [0, 1])
def test_the_same_seed_gives_the_same_metric_with_and_without_the_cache(
    prepared, tmp_path, tracking_uri, blocks
):
    config = TrialConfig(blocks, 0.005, 2, *((0.1, 2, 1) if blocks else ()))
    values = {}
    for name, cache in (("cached", PrefixCache(tmp_path / "cache")), ("uncached", None)):
        runtime = StudyRuntime(prepared, cache)
        study = optuna.create_study(direction="maximize")
        trial = study.ask()
        run_trial(runtime, StudyTracker(tracking_uri, prepared.spec.study.name), trial, config)
        values[name] = study._storage.get_trial(trial._trial_id).intermediate_values
    assert values["cached"].keys() == values["uncached"].keys()
    for step in values["cached"]:
        assert values["cached"][step] == pytest.approx(values["uncached"][step], abs=1e-6)


def test_states_advanced_from_a_lower_block_equal_those_computed_from_the_input(prepared):
    model = prepared.pretrained.build(3, trainable_from=6)
    indices = prepared.splits.val[:40]
    at_two = compute_states(model, prepared.data, indices, 2, 16, torch.device("cpu"))
    advanced = advance_states(model, at_two, 2, 5, 16, torch.device("cpu"))
    direct = compute_states(model, prepared.data, indices, 5, 16, torch.device("cpu"))
    # the pooled features a head reads (padding positions may differ; the mask says which count)
    pool = model.neck
    torch.testing.assert_close(
        pool(model.blocks[5](advanced)), pool(model.blocks[5](direct)), atol=1e-5, rtol=1e-4
    )


def test_random_augmentation_turns_caching_off_and_says_so(prepared, caplog):
    runtime = StudyRuntime(prepared, PrefixCache(None))
    data = prepared.data
    data._transform = v2.Compose([v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32)])
    try:
        with caplog.at_level(logging.WARNING):
            source = runtime.source(prepared.pretrained.build(3), "train", 6)
    finally:
        data._transform = None
    assert source._states is None  # computed live, batch by batch
    assert "RandomHorizontalFlip" in caplog.text


def test_without_a_cache_the_frozen_prefix_runs_on_every_batch_and_the_log_says_so(prepared, caplog):
    runtime = StudyRuntime(prepared, None)
    with caplog.at_level(logging.WARNING):
        source = runtime.source(prepared.pretrained.build(3), "val", 4)
        runtime.source(prepared.pretrained.build(3), "val", 5)
    assert source._states is None and source.start == 4
    assert caplog.text.count("cache is off") == 1  # said once, not per stage


# a process started as a --workers process is (by a forkserver, whose start method it inherits)
# iterates a DataLoader with worker processes, prints its pid and theirs, then waits
_ITERATING = """
import multiprocessing, os, time
from torch.utils.data import DataLoader
from sweeper.states import loader_processes

def iterate():
    batches = iter(DataLoader(list(range(100)), batch_size=1, **loader_processes(2)))
    next(batches)
    print(os.getpid(), *[w.pid for w in batches._workers], flush=True)
    time.sleep(600)

if __name__ == "__main__":
    process = multiprocessing.get_context("forkserver").Process(target=iterate)
    process.start()
    process.join()
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_loader_workers_are_children_of_the_iterating_process_and_die_the_moment_it_does(tmp_path):
    script = tmp_path / "iterating.py"
    script.write_text(_ITERATING)
    top = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        iterating, *loaders = map(int, top.stdout.readline().split())
        assert len(loaders) == 2
        # torch's watchdog in each loader worker watches its parent: that must be the iterating
        # process, not a forkserver that outlives it
        assert {_parent_of(pid) for pid in loaders} == {iterating}
        os.kill(iterating, signal.SIGKILL)
        # at once: torch's own watchdog would take up to 5 s, and only if it sees the death
        assert _all_gone_within(loaders, 1.0), "a loader worker outlived the process iterating"
    finally:
        top.kill()
        top.wait()


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _all_gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not [pid for pid in pids if _alive(pid)]:
            return True
        time.sleep(0.02)
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie is dead, waiting for its new parent to reap it
