"""Data kinds and the split: the registry is what [data] kind may name, and the split is
stratified, disjoint, complete and a function of the seed alone."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sweeper.backbones.loading import _image_transform
from sweeper.data import LOADERS, EncodedData, RawData, load_raw, split_indices
from sweeper.errors import UserError
from sweeper.spec import load_spec
from tests.conftest import _to_toml, write_spec


def test_an_unknown_data_kind_is_refused_with_the_registry_s_names(tmp_path):
    spec = load_spec(write_spec(tmp_path, data={"kind": "parquet"}))
    with pytest.raises(UserError) as caught:
        load_raw(spec)
    message = str(caught.value)
    assert "tiny.toml: [data] kind is 'parquet'" in message
    for kind in LOADERS:  # every registered kind is offered, and nothing else
        assert kind in message


@st.composite
def _labels(draw):
    classes = draw(st.integers(2, 5))
    counts = draw(st.lists(st.integers(3, 60), min_size=classes, max_size=classes))
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    return draw(st.permutations(labels))


@settings(max_examples=80, deadline=None)
@given(labels=_labels(), val=st.floats(0.05, 0.4), test=st.floats(0.05, 0.4), seed=st.integers(0, 2**31))
def test_the_split_is_disjoint_complete_stratified_and_a_function_of_the_seed(labels, val, test, seed):
    counts = np.bincount(labels)
    if any(max(1, round(n * val)) + max(1, round(n * test)) >= n for n in counts):
        with pytest.raises(UserError, match="leaving none to train on"):  # a class too small for three splits
            split_indices(labels, val, test, seed)
        return
    splits = split_indices(labels, val, test, seed)
    parts = [splits.train, splits.val, splits.test]
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # every example once
    array = np.asarray(labels)
    for label in np.unique(array):
        members = int((array == label).sum())
        in_val, in_test = int((array[splits.val] == label).sum()), int((array[splits.test] == label).sum())
        # every class in each split, in proportion (rounded, at least one)
        assert in_val == max(1, round(members * val)) and in_test == max(1, round(members * test))
        assert (array[splits.train] == label).any()
    again = split_indices(labels, val, test, seed)
    assert all((a == b).all() for a, b in zip(parts, [again.train, again.val, again.test], strict=True))


def test_a_class_too_small_for_three_splits_is_refused_by_name():
    labels = [0] * 20 + [1] * 2
    with pytest.raises(UserError) as caught:
        split_indices(labels, 0.2, 0.2, 0, classes=["plenty", "rare"])
    assert "class 'rare' has 2 examples" in str(caught.value)


def test_another_seed_gives_another_split():
    labels = [i % 3 for i in range(300)]
    assert not (split_indices(labels, 0.2, 0.2, 0).test == split_indices(labels, 0.2, 0.2, 1).test).all()


def test_the_vader_lexicon_reads_as_three_classes_by_the_mean_rating(tmp_path):
    spec = load_spec(write_spec(tmp_path, data={"kind": "vader_lexicon", "path": None}))
    raw = load_raw(spec)
    assert raw.classes == ["negative", "neutral", "positive"] and raw.modality == "text"
    by_word = dict(zip(raw.examples, raw.labels, strict=True))
    assert (
        by_word["good"] == 2 and by_word["bad"] == 0 and by_word["table"] == 1 if "table" in by_word else True
    )


def test_a_jsonl_line_that_is_not_json_is_named(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    spec = load_spec(write_spec(tmp_path, data={"kind": "jsonl", "path": "rows.jsonl"}))
    with pytest.raises(UserError, match="rows.jsonl line 2 is not JSON"):
        load_raw(spec)


def _csv_spec(tmp_path, content: bytes, **data):
    (tmp_path / "rows.csv").write_bytes(content)
    return load_spec(write_spec(tmp_path, data={"path": "rows.csv", **data}))


# 2 real classes, an empty label and a short row: these once became classes '' and 'None'
_ROWS = "".join(f"w{i},{'ab'[i % 2]}\n" for i in range(8)).encode()
_HOLEY = b"text,label\n" + _ROWS + b"odd,\nshort\n"


def test_empty_and_missing_labels_are_refused_not_made_into_classes(tmp_path):
    with pytest.raises(UserError) as caught:
        load_raw(_csv_spec(tmp_path, _HOLEY))
    assert "column 'label' is empty in 2 rows (rows 10, 11)" in str(caught.value)


def test_on_missing_drop_loads_the_complete_rows_and_logs_the_count(tmp_path, caplog):
    raw = load_raw(_csv_spec(tmp_path, _HOLEY, on_missing="drop"))
    assert raw.classes == ["a", "b"] and len(raw.labels) == 8 and raw.dropped == 2
    assert "2 rows with an empty text or label dropped" in caplog.text


def test_a_csv_with_a_spreadsheet_s_byte_order_mark_loads_by_its_first_column(tmp_path):
    raw = load_raw(_csv_spec(tmp_path, "\ufefftext,label\n".encode() + _ROWS))
    assert raw.examples[0] == "w0" and raw.classes == ["a", "b"] and raw.dropped == 0


def test_a_class_with_too_few_examples_for_three_splits_is_refused(tmp_path):
    rows = "text,label\n" + "".join(f"w{i},a\n" for i in range(10)) + "x,b\ny,b\n"
    (tmp_path / "few.csv").write_text(rows)
    spec = load_spec(write_spec(tmp_path, data={"path": "few.csv"}))
    with pytest.raises(UserError, match="class 'b' has 2 examples; every class needs at least 3"):
        load_raw(spec)


# --- the data digest: what the study's identity holds of its data -------------------------------


def _csv_digest(spec_path) -> str:
    return load_raw(load_spec(spec_path)).digest()


def test_the_data_digest_is_the_same_on_every_load_and_ignores_the_file_s_times(tmp_path):
    spec = write_spec(tmp_path)
    first = _csv_digest(spec)
    os.utime(tmp_path / "tiny.csv", (1_000_000, 1_000_000))  # touched, not changed
    assert _csv_digest(spec) == first


def _rewrite_csv(path, change) -> None:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(change(rows))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda rows: [rows[0], [rows[1][0], rows[-1][1]], *rows[2:]], id="a flipped label"),
        pytest.param(lambda rows: [*rows, ["splendid", "positive"]], id="an added row"),
        pytest.param(lambda rows: [rows[0], ["x" + rows[1][0], rows[1][1]], *rows[2:]], id="an edited text"),
    ],
)
def test_the_data_digest_changes_with_the_examples_or_labels(tmp_path, change):
    spec = write_spec(tmp_path)
    before = _csv_digest(spec)
    _rewrite_csv(tmp_path / "tiny.csv", change)
    assert _csv_digest(spec) != before


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_spec(root, folder):
    for c, name in enumerate(("cat", "dog")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (folder / name / f"{i}.png").write_bytes(_png(10 * c + i))
    spec = {
        "study": {"name": "img"},
        "model": {"source": "torchvision", "name": "resnet18", "weights": "none"},
        "data": {"kind": "imagefolder", "path": str(folder), "image_size": 32},
    }
    path = root / f"{folder.name}.toml"
    path.write_text(_to_toml(spec))
    return load_spec(path)


def test_an_image_folder_s_digest_and_cache_key_follow_the_files_bytes_not_their_paths_or_times(tmp_path):
    spec = _image_spec(tmp_path, tmp_path / "images")
    raw = load_raw(spec)
    transform = _image_transform(None, 32)
    key = EncodedData(raw, image_transform=transform).fingerprint()
    os.utime(tmp_path / "images" / "cat" / "0.png", (1_000_000, 1_000_000))
    copied = load_raw(_image_spec(tmp_path, tmp_path / "elsewhere"))  # the same files in another folder
    assert load_raw(spec).digest() == raw.digest() == copied.digest()
    assert EncodedData(load_raw(spec), image_transform=transform).fingerprint() == key

    (tmp_path / "images" / "cat" / "0.png").write_bytes(_png(99))  # same name, other pixels
    assert load_raw(spec).digest() != raw.digest()
    assert EncodedData(load_raw(spec), image_transform=transform).fingerprint() != key


def test_in_memory_images_are_digested_by_their_bytes(tmp_path):
    spec = load_spec(write_spec(tmp_path, data={"kind": "digits", "path": None}))
    raw = load_raw(spec)
    assert raw.digest() == load_raw(spec).digest()
    raw.examples[0] = raw.examples[0].clone()
    raw.examples[0][0, 0, 0] += 1
    assert RawData(raw.modality, raw.examples, raw.labels, raw.classes, "").digest() != raw.digest()
