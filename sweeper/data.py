"""Data kinds (one small loader each, in a registry), the deterministic split, and encoding
examples into model inputs once per dataset (tokenization happens here, never per epoch)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sweeper.digests import digest, files_digests, sequence_digest, tensor_digest
from sweeper.errors import UserError
from sweeper.images import DecodedRecord, decodable_images
from sweeper.readers import TextRows, read_csv, read_jsonl
from sweeper.spec import DataSection, Spec

log = logging.getLogger(__name__)


@dataclass
class RawData:
    """Examples as the data kind gives them: texts or images, with integer labels."""

    modality: str  # "text" | "image"
    examples: list[Any]
    labels: list[int]
    classes: list[str]
    description: str
    dropped: int = 0  # examples left out under [data] on_missing = "drop"
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)

    def digest(self) -> str:
        """A digest of the examples (texts, image file contents, tensor bytes), their labels and
        the class names, in order: what the study's identity holds of its data. Not of file names
        or times: a copied or touched file is the same data; an edited one is not."""
        if self._digest is None:
            header = {"modality": self.modality, "classes": self.classes, "labels": self.labels}
            self._digest = sequence_digest(header, _example_digests(self.modality, self.examples))
        return self._digest


Loader = Callable[[DataSection, Spec], RawData]
# the data kinds: [data] kind names one of these (a new kind is one decorated function)
LOADERS: dict[str, Loader] = {}


def loader(kind: str):
    def register(fn: Loader) -> Loader:
        LOADERS[kind] = fn
        return fn

    return register


def loader_for(spec: Spec) -> Loader:
    """The spec's data kind, from the registry; an unknown kind is one UserError listing them."""
    found = LOADERS.get(spec.data.kind)
    if found is None:
        raise UserError(
            f"{spec.source_path}: [data] kind is {spec.data.kind!r}, but no data kind has that name; "
            f"use one of: {', '.join(LOADERS)}"
        )
    return found


def load_raw(spec: Spec, cache_dir: Path | None = None) -> RawData:
    """The spec's examples and labels, checked: image files that decode (`images`; those decoded
    before, recorded in ``cache_dir``, are not decoded again), at least 2 classes, 3 examples of each."""
    raw = _decodable(loader_for(spec)(spec.data, spec), spec, cache_dir)
    counts = np.bincount(raw.labels, minlength=len(raw.classes))
    if len(raw.classes) < 2:
        raise UserError(f"[data] {raw.description} has {len(raw.classes)} class; need at least 2")
    if counts.min() < 3:
        rare = raw.classes[int(counts.argmin())]
        raise UserError(
            f"[data] {raw.description}: class {rare!r} has {counts.min()} examples; every class "
            "needs at least 3 (one per split)"
        )
    return raw


def _decodable(raw: RawData, spec: Spec, cache_dir: Path | None) -> RawData:
    """Image files that do not decode refused by name, or dropped ([data] on_missing): for every
    data kind that reads image files."""
    if raw.modality != "image" or not raw.examples or not all(isinstance(e, str) for e in raw.examples):
        return raw
    root = spec.resolve(spec.data.path) if spec.data.path else Path.cwd()
    record = DecodedRecord(cache_dir) if cache_dir is not None else None
    drop = spec.data.on_missing == "drop"
    files, labels, dropped = decodable_images(raw.examples, raw.labels, root, drop, record)
    return dataclasses.replace(raw, examples=files, labels=labels, dropped=raw.dropped + dropped)


def _labels_to_indices(values: list[Any]) -> tuple[list[int], list[str]]:
    classes = sorted({str(v) for v in values})
    index = {c: i for i, c in enumerate(classes)}
    return [index[str(v)] for v in values], classes


def _data_path(data: DataSection, spec: Spec, want_dir: bool = False) -> Path:
    if not data.path:
        raise UserError(f"[data] path is missing; kind {data.kind!r} reads a file or folder")
    path = spec.resolve(data.path)
    ok = path.is_dir() if want_dir else path.is_file()
    if not ok:
        what = "folder" if want_dir else "file"
        raise UserError(f"[data] path is {data.path!r}, but {path} is not an existing {what}")
    return path


@loader("csv")
def _load_csv(data: DataSection, spec: Spec) -> RawData:
    path = _data_path(data, spec)
    return _text_data(read_csv(path, data.text_column, data.label_column, data.on_missing), path)


@loader("jsonl")
def _load_jsonl(data: DataSection, spec: Spec) -> RawData:
    path = _data_path(data, spec)
    return _text_data(read_jsonl(path, data.text_column, data.label_column, data.on_missing), path)


def _text_data(rows: TextRows, path: Path) -> RawData:
    if rows.dropped:
        log.warning(
            '[data] %s: %d rows with an empty text or label dropped (on_missing = "drop")', path, rows.dropped
        )
    labels, classes = _labels_to_indices(rows.labels)
    return RawData("text", rows.texts, labels, classes, str(path), rows.dropped)


@loader("imagefolder")
def _load_imagefolder(data: DataSection, spec: Spec) -> RawData:
    from torchvision.datasets import ImageFolder

    path = _data_path(data, spec, want_dir=True)
    try:
        folder = ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"[data] path {path} is not an ImageFolder (one folder per class): {exc}") from None
    files, labels = [p for p, _ in folder.samples], [t for _, t in folder.samples]
    return RawData("image", files, labels, list(folder.classes), str(path))  # decoded by load_raw


# VADER: mean human rating in [-4, 4]; the 3-class reading of DESIGN.md
VADER_THRESHOLD = 0.5


@loader("vader_lexicon")
def _load_vader(data: DataSection, spec: Spec) -> RawData:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    lexicon = SentimentIntensityAnalyzer().lexicon
    words = sorted(lexicon)
    names = ["negative", "neutral", "positive"]
    labels = [0 if lexicon[w] < -VADER_THRESHOLD else 2 if lexicon[w] > VADER_THRESHOLD else 1 for w in words]
    return RawData("text", words, labels, names, "the VADER lexicon (vaderSentiment)")


@loader("digits")
def _load_digits(data: DataSection, spec: Spec) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 8x8 grey levels 0..16 → 3-channel uint8 images; the model's transform resizes them
    images = torch.from_numpy((bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1).repeat(1, 3, 1, 1)
    return RawData(
        "image",
        list(images),
        [int(t) for t in bunch.target],
        [str(i) for i in range(10)],
        "scikit-learn digits",
    )


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(
    labels: list[int], val_fraction: float, test_fraction: float, seed: int, classes: list[str] | None = None
) -> Splits:
    """Stratified, deterministic in the seed; every class lands in each split. Raises UserError
    where a class has too few examples for that (``classes`` names them in the message)."""
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels_array):
        members = rng.permutation(np.flatnonzero(labels_array == label))
        n_val = max(1, round(len(members) * val_fraction))
        n_test = max(1, round(len(members) * test_fraction))
        if n_val + n_test >= len(members):
            name = classes[label] if classes else str(label)
            raise UserError(
                f"[data] class {name!r} has {len(members)} examples: val_fraction {val_fraction:g} and "
                f"test_fraction {test_fraction:g} take {n_val} and {n_test}, leaving none to train on; "
                "give every class more examples or lower the fractions"
            )
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return Splits(*(np.sort(np.concatenate(parts[name])) for name in ("train", "val", "test")))


class EncodedData(Dataset):
    """Model inputs for every example, encoded once: token ids for text, transformed images."""

    def __init__(self, raw: RawData, tokenizer=None, image_transform=None, max_length: int = 128):
        self.raw = raw
        self.labels = torch.tensor(raw.labels)
        self._transform = image_transform
        self._tokens: dict[str, torch.Tensor] | None = None
        if raw.modality == "text":
            encoded = tokenizer(
                raw.examples,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            self._tokens = {
                "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"],
            }

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> torch.Tensor | None:
        """Tokens per example (text), for batching like lengths together; None for images."""
        return self._tokens["attention_mask"].sum(1) if self._tokens is not None else None

    def fingerprint(self) -> str:
        """A digest of what the model will see: the cache key's data part."""
        if self._tokens is not None:
            return tensor_digest({**self._tokens, "labels": self.labels})
        return digest({"examples": self.raw.digest(), "transform": repr(self._transform)})

    @property
    def random_augmentation(self) -> str | None:
        """The name of a random transform in the preprocessing, if any: its output is not cacheable."""
        return find_random_transform(self._transform)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self._tokens is not None:
            return {k: v[i] for k, v in self._tokens.items()}, self.labels[i]
        return {"pixel_values": self._transform(_open_image(self.raw.examples[i]))}, self.labels[i]


def _example_digests(modality: str, examples: list[Any]) -> list[str]:
    """Texts as they are; image files by their bytes; tensors (in-memory images) by theirs."""
    if modality == "text":
        return examples
    files = [e for e in examples if isinstance(e, str)]
    by_file = iter(files_digests(files))
    return [next(by_file) if isinstance(e, str) else tensor_digest({"x": e}) for e in examples]


def find_random_transform(transform) -> str | None:
    """Random* transforms (crops, flips, jitter) anywhere in a torchvision pipeline."""
    if transform is None:
        return None
    name = type(transform).__name__
    if name.startswith("Random") or name in {"AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix"}:
        return name
    for child in getattr(transform, "transforms", []) or []:
        found = find_random_transform(child)
        if found:
            return found
    return None


def _open_image(example):
    if isinstance(example, str):
        from PIL import Image

        with Image.open(example) as image:
            return image.convert("RGB")
    return example


def encode(raw: RawData, pretrained) -> EncodedData:
    """Turn raw examples into the model's inputs; text for text models, images for image models."""
    wanted = pretrained.family.input_kind
    if raw.modality != wanted:
        raise UserError(
            f"[data] {raw.description} holds {raw.modality}s, but the model "
            f"({pretrained.family.name}) reads {wanted}s"
        )
    return EncodedData(raw, pretrained.tokenizer, pretrained.image_transform, pretrained.max_length)
