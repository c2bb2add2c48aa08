"""The frozen-prefix cache: content-addressed, written atomically, shared by processes, bounded,
and never trusting an entry it cannot read."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from sweeper.cache import PrefixCache


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


def _blocked_on(inode: int) -> int:
    """How many processes wait for a flock on this inode (Linux lists them in /proc/locks)."""
    return sum(" -> FLOCK " in line and line.split()[6].endswith(f":{inode}") for line in open("/proc/locks"))


def _compute_while_the_others_wait(directory: str, marker: str, barrier, others: int) -> None:
    def compute():
        with open(marker, "a") as f:
            f.write("x")
        inode = next(Path(directory).glob("*/*.lock")).stat().st_ino
        deadline = time.monotonic() + 60
        while _blocked_on(inode) < others and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the handshake, not a barrier
        with open(marker + ".seen", "w") as f:
            f.write(str(_blocked_on(inode)))
        return _states()

    barrier.wait()  # all at once
    PrefixCache(Path(directory)).get({"shared": True}, compute)


@pytest.mark.slow
def test_concurrent_workers_compute_a_shared_entry_once(tmp_path):
    marker = tmp_path / "computed"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    workers = [
        context.Process(
            target=_compute_while_the_others_wait, args=(str(tmp_path / "c"), str(marker), barrier, 2)
        )
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    # one computed, while the two others waited on its lock; then they read its entry
    assert marker.read_text() == "x"
    assert (tmp_path / "computed.seen").read_text() == "2"
