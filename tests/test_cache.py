"""The frozen-prefix cache: content-addressed, written atomically, shared by processes, bounded,
never trusting an entry it cannot read or whose checksum fails, and never failing for its disk."""

from __future__ import annotations

import logging
import multiprocessing
import struct
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import save_file

from sweeper.cache import PrefixCache
from sweeper.commands import run_worker
from sweeper.settings import Options
from tests.conftest import tmpfs, write_spec


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


def _flip_payload_bytes(entry: Path) -> None:
    """Flips bytes in the middle of an entry's tensor data, leaving its header intact."""
    data = bytearray(entry.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]  # safetensors: header length, header, tensor bytes
    middle = (start + len(data)) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    entry.write_bytes(bytes(data))
    with safe_open(entry, framework="pt") as readable:  # the header still reads
        assert list(readable.keys())


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_an_entry_whose_payload_changed_on_disk_is_logged_deleted_and_recomputed(tmp_path, caplog):
    states = {"x": torch.randn(64, 32, generator=torch.Generator().manual_seed(0))}
    PrefixCache(tmp_path).get({"k": 1}, _Counter(states))
    entry = next(tmp_path.glob("*/*.safetensors"))
    _flip_payload_bytes(entry)

    compute = _Counter(states)
    got = PrefixCache(tmp_path).get({"k": 1}, compute)
    assert compute.calls == 1  # recomputed, not read
    torch.testing.assert_close(got, states, rtol=0, atol=0)
    assert _warnings(caplog, f"{entry} fails its checksum")
    # the recomputed entry replaced it, and reads back without computing
    again = _Counter(states)
    torch.testing.assert_close(PrefixCache(tmp_path).get({"k": 1}, again), states, rtol=0, atol=0)
    assert again.calls == 0


def test_a_corrupt_entry_below_is_not_used_to_advance_from(tmp_path):
    PrefixCache(tmp_path).get({"cut": 0}, _Counter(_states()))
    _flip_payload_bytes(next(tmp_path.glob("*/*.safetensors")))
    assert PrefixCache(tmp_path).lookup({"cut": 0}) is None
    assert not list(tmp_path.glob("*/*.safetensors"))  # deleted


def test_an_entry_without_a_checksum_an_older_format_is_recomputed(tmp_path, caplog):
    PrefixCache(tmp_path).get({"k": 1}, _Counter(_states()))
    entry = next(tmp_path.glob("*/*.safetensors"))
    save_file({"x": torch.zeros(8, 4)}, entry)  # as sweeper wrote entries before checksums

    compute = _Counter(_states())
    torch.testing.assert_close(PrefixCache(tmp_path).get({"k": 1}, compute), _states())
    assert compute.calls == 1
    assert _warnings(caplog, f"{entry} has no checksum")


def _unwritable_warnings(caplog, folder: Path) -> list[str]:
    return _warnings(caplog, f"frozen-prefix cache folder {folder} cannot be written")


def _no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".tmp")]


def test_a_read_only_cache_folder_reads_its_entries_and_computes_the_rest_in_memory(tmp_path, caplog):
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        PrefixCache(disk).get({"k": 1}, _Counter(_states()))
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {remounted.stderr.strip()}")
        cache = PrefixCache(disk)
        existing = _Counter(_states())
        torch.testing.assert_close(cache.get({"k": 1}, existing), _states())
        assert existing.calls == 0  # read, although its access time cannot be touched
        for k in (2, 3):  # new entries: computed, kept in memory, not written
            new = _Counter(_states(width=k))
            torch.testing.assert_close(cache.get({"k": k}, new), _states(width=k))
            assert new.calls == 1
        assert len(list(disk.glob("*/*.safetensors"))) == 1
        assert len(_unwritable_warnings(caplog, disk)) == 1  # once per folder
        assert "Read-only file system" in _unwritable_warnings(caplog, disk)[0]
        assert "--cache-dir" in caplog.text and "--no-cache" in caplog.text


def test_a_cache_folder_that_cannot_be_created_computes_in_memory(tmp_path, caplog):
    with tmpfs(tmp_path / "disk", size="1m", readonly=True) as disk:
        cache = PrefixCache(disk / "sweeper")
        compute = _Counter(_states())
        torch.testing.assert_close(cache.get({"k": 1}, compute), _states())
        torch.testing.assert_close(cache.get({"k": 1}, compute), _states())
        assert compute.calls == 1  # the second from memory
        assert len(_unwritable_warnings(caplog, disk / "sweeper")) == 1


def test_a_cache_disk_smaller_than_an_entry_computes_in_memory_and_leaves_nothing(tmp_path, caplog):
    big = {"x": torch.randn(256, 128)}  # 128 KiB: more than the disk
    with tmpfs(tmp_path / "disk", size="64k") as disk:
        cache = PrefixCache(disk, memory_bytes=0)
        for _ in range(2):
            compute = _Counter(big)
            torch.testing.assert_close(cache.get({"k": 1}, compute), big)
            assert compute.calls == 1
        assert not list(disk.glob("*/*.safetensors")) and _no_temporary_files(disk)
        warned = _unwritable_warnings(caplog, disk)
        assert len(warned) == 1 and "MiB free" in warned[0]


def test_a_disk_that_fills_during_a_write_leaves_no_temporary_file(tmp_path, caplog):
    # a few bytes of tensors under a header larger than the disk: the free-space check passes
    # (as when another process fills the disk meanwhile) and the write itself meets ENOSPC
    many = {f"t{i:05d}": torch.tensor([float(i)]) for i in range(5000)}
    with tmpfs(tmp_path / "disk", size="128k") as disk:
        compute = _Counter(many)
        torch.testing.assert_close(PrefixCache(disk).get({"k": 1}, compute), many)
        assert compute.calls == 1
        assert not list(disk.glob("*/*.safetensors")) and _no_temporary_files(disk)
        warned = _unwritable_warnings(caplog, disk)
        assert len(warned) == 1 and "No space left on device" in warned[0]


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:  # full
            pass


def _trials(workdir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'sweeper.db'}").trials


@pytest.mark.slow
def test_a_study_whose_cache_disk_is_full_completes_every_trial(workdir, tracking_uri, tiny_bert, caplog):
    spec = write_spec(workdir, model={"name": str(tiny_bert)}, budget={"trials": 3, "fe_trials": 1})
    with tmpfs(workdir / "cache", size="64k") as disk:
        _fill(disk)
        options = Options(tracking_uri=tracking_uri, cache_dir=disk, workers=1)
        run_worker(spec, options, Console(quiet=True))
        assert not list(disk.glob("*/*.safetensors")) and _no_temporary_files(disk)
    states = [t.state for t in _trials(workdir, "tiny")]
    assert states == [optuna.trial.TrialState.COMPLETE] * 4
    assert len(_unwritable_warnings(caplog, disk)) == 1


@pytest.mark.slow
def test_an_entry_corrupted_between_two_studies_does_not_change_the_second_study_s_value(
    workdir, tracking_uri, tiny_bert, caplog
):
    def first_trial(name: str, **options) -> optuna.trial.FrozenTrial:
        spec = write_spec(
            workdir,
            name=name,
            model={"name": str(tiny_bert)},
            study={"metric": "loss"},  # continuous: garbage states would show
            budget={"trials": 1, "fe_trials": 0},
        )
        run_worker(spec, Options(tracking_uri=tracking_uri, workers=1, **options), Console(quiet=True))
        return _trials(workdir, name)[0]

    cache = workdir / "cache"
    first_trial("first", cache_dir=cache)
    entries = list(cache.glob("*/*.safetensors"))
    assert entries
    for entry in entries:
        _flip_payload_bytes(entry)

    second = first_trial("second", cache_dir=cache)
    uncached = first_trial("uncached", no_cache=True)
    assert second.params == uncached.params
    assert second.value == pytest.approx(uncached.value, rel=1e-5)
    assert _warnings(caplog, "fails its checksum")
