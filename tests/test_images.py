"""Every image of an image folder is decoded when the data loads: one that does not decode is named
before any work (or dropped where the spec says so), not found by every trial's DataLoader."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sweeper.data import load_raw
from sweeper.errors import UserError
from sweeper.images import SHOWN, DecodedRecord, decodable_images, undecodable_images
from sweeper.spec import load_spec
from tests.conftest import _to_toml, tmpfs


def _image_bytes(seed: int, fmt: str, side: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _image_folder(root: Path, per_class: int = 4) -> Path:
    """Two classes of small real PNGs."""
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(_image_bytes(10 * c + i, "PNG"))
    return root


def _add_broken_files(root: Path) -> list[str]:
    """A JPEG cut in half (its header intact), a text file named .jpg and an empty file."""
    whole = _image_bytes(99, "JPEG", side=64)
    (root / "cat" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "dog" / "notes.jpg").write_text("this is not an image\n")
    (root / "dog" / "empty.png").write_bytes(b"")
    return ["cat/truncated.jpg", "dog/notes.jpg", "dog/empty.png"]


def _image_spec(folder: Path, data_root: Path, name: str = "pics", **data) -> Path:
    sections = {
        "study": {"name": name},
        "model": {"source": "torchvision", "name": "resnet18", "weights": "none"},
        "data": {"kind": "imagefolder", "path": str(data_root), "image_size": 32, **data},
        "search": {"unfrozen_blocks": [0, 1], "head_epochs": 1, "stage_epochs": 1},
        "budget": {"trials": 2, "fe_trials": 0, "pruner": "none", "confirm_seeds": 2, "max_confirm_seeds": 2},
        "train": {"batch_size": 8},
    }
    spec = folder / f"{name}.toml"
    spec.write_text(_to_toml(sections))
    return spec


def test_a_folder_of_good_images_loads_whole(tmp_path):
    raw = load_raw(load_spec(_image_spec(tmp_path, _image_folder(tmp_path / "images"))))
    assert len(raw.examples) == 8 and raw.classes == ["cat", "dog"]


def test_truncated_unreadable_and_empty_images_are_refused_by_name_before_any_work(tmp_path):
    root = _image_folder(tmp_path / "images")
    broken = _add_broken_files(root)
    with Image.open(root / "cat" / "truncated.jpg") as image:  # its header reads: only decoding fails
        assert image.size == (64, 64)
    with pytest.raises(UserError) as caught:
        load_raw(load_spec(_image_spec(tmp_path, root)))
    message = str(caught.value)
    assert f"3 of 11 images in {root} do not decode" in message
    for name in broken:
        assert name in message
    assert "empty file" in message and "truncated" in message
    assert '[data] on_missing = "drop"' in message
    assert "\n" not in message  # one line


def test_many_broken_images_name_the_first_few_and_count_the_rest(tmp_path):
    root = _image_folder(tmp_path / "images")
    bad = [root / "cat" / f"bad{i:02d}.png" for i in range(SHOWN + 7)]
    for path in bad:
        path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UserError) as caught:
        decodable_images([str(p) for p in bad], [0] * len(bad), root, drop=False)
    message = str(caught.value)
    assert f"{len(bad)} of {len(bad)} images" in message
    assert "cat/bad00.png" in message and f"cat/bad{SHOWN - 1:02d}.png" in message
    assert f"cat/bad{SHOWN:02d}.png" not in message and "and 7 more" in message


def test_with_on_missing_drop_broken_images_are_skipped_counted_and_logged(tmp_path, caplog):
    root = _image_folder(tmp_path / "images")
    broken = {str(root / name) for name in _add_broken_files(root)}
    raw = load_raw(load_spec(_image_spec(tmp_path, root, on_missing="drop")))
    assert raw.dropped == 3 and len(raw.examples) == 8 and not broken & set(raw.examples)
    # labels stay with their files
    assert raw.labels == [raw.classes.index(Path(p).parent.name) for p in raw.examples]
    assert "3 of 11 images" in caplog.text and "dog/notes.jpg" in caplog.text and "dropped" in caplog.text


def test_every_image_is_checked_in_order_whatever_the_thread_pool_does(tmp_path):
    root = _image_folder(tmp_path / "images", per_class=80)  # several chunks of work
    paths = sorted(str(p) for p in root.rglob("*.png"))
    for path in paths[5::37]:
        Path(path).write_bytes(b"")
    found = undecodable_images(paths)
    assert [f.path for f in found] == paths[5::37]


def test_the_progress_bar_stays_quiet_where_stderr_is_no_terminal(tmp_path, capfd):
    root = _image_folder(tmp_path / "images")
    undecodable_images(sorted(str(p) for p in root.rglob("*.png")))
    assert capfd.readouterr().err == ""


def _break_keeping_its_stamp(path: Path) -> None:
    """Garbage of the same size, with the file's modification time put back: to the record, the
    same file as before."""
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_file_decoded_once_is_not_decoded_again_until_it_is_written(tmp_path):
    root = _image_folder(tmp_path / "images")
    spec = load_spec(_image_spec(tmp_path, root))
    cache = tmp_path / "cache"
    first = load_raw(spec, cache)
    assert (cache / DecodedRecord.NAME).is_file()
    victim = root / "cat" / "0.png"
    _break_keeping_its_stamp(victim)
    # recorded as decoded with this size and time: not decoded again (another process, a later command)
    assert load_raw(spec, cache).examples == first.examples
    # without the record, or once the file is written (a new time), it is decoded, and refused
    with pytest.raises(UserError, match="cat/0.png"):
        load_raw(spec)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(UserError, match="cat/0.png"):
        load_raw(spec, cache)


def test_a_file_that_did_not_decode_is_not_recorded(tmp_path):
    root = _image_folder(tmp_path / "images")
    broken = _add_broken_files(root)
    spec = load_spec(_image_spec(tmp_path, root, on_missing="drop"))
    cache = tmp_path / "cache"
    assert load_raw(spec, cache).dropped == 3
    assert load_raw(spec, cache).dropped == 3  # still found: only the files that decoded are recorded
    with sqlite3.connect(cache / DecodedRecord.NAME) as db:
        recorded = {row[0] for row in db.execute("SELECT path FROM decoded")}
    assert len(recorded) == 8 and not {str(root / name) for name in broken} & recorded


def test_a_cache_folder_that_cannot_hold_the_record_never_fails_the_loading(tmp_path, caplog):
    root = _image_folder(tmp_path / "images")
    _add_broken_files(root)
    spec = load_spec(_image_spec(tmp_path, root, on_missing="drop"))
    with tmpfs(tmp_path / "cache", size="64k", readonly=True) as cache, caplog.at_level("WARNING"):
        raw = load_raw(spec, cache)
    assert raw.dropped == 3 and len(raw.examples) == 8  # every image decoded, as without a record
    assert caplog.text.count("record of decoded images") == 1 and "every image is decoded" in caplog.text


@pytest.mark.slow
def test_the_study_command_refuses_a_broken_image_folder_in_one_line_and_writes_nothing(tmp_path):
    root = _image_folder(tmp_path / "images")
    _add_broken_files(root)
    spec = _image_spec(tmp_path, root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("SWEEPER_STORAGE", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-m", "sweeper", "study", str(spec)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "cat/truncated.jpg" in lines[0], output
    assert not (tmp_path / "sweeper.db").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "reports").exists()
