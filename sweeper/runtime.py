"""What training runs in one process share: the spec's model, data and split, loaded and checked
once (`prepare`), and the runtime that hands out their frozen-prefix states (`StudyRuntime`)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweeper.backbones import BlockModel, Pretrained, load_pretrained
from sweeper.cache import PrefixCache
from sweeper.data import EncodedData, RawData, Splits, encode, load_raw, split_indices
from sweeper.device import pick_device
from sweeper.errors import UserError
from sweeper.similarity import pooled_features
from sweeper.spec import Spec, bounds
from sweeper.states import PrefixStates, StateSource

Say = Callable[[str], None]


@dataclass(frozen=True)
class Prepared:
    """The spec's model, data and split, loaded and checked against each other, and the device."""

    spec: Spec
    pretrained: Pretrained
    data: EncodedData
    splits: Splits
    device: torch.device


def prepare(
    spec: Spec,
    device: str,
    say: Say | None = None,
    labelled: tuple[RawData, Splits] | None = None,
    cache_dir: Path | None = None,
) -> Prepared:
    """Load the data and the model, check them against the spec and pick the device: everything
    a run needs before it trains. Raises UserError on bad input; writes nothing but the cache
    folder's record of decoded images. ``labelled``: the spec's `labelled_split`, where the
    caller has it already."""
    raw, splits = labelled or labelled_split(spec, cache_dir)
    if say:
        say(f"data: {raw.description}, {len(raw.labels)} examples, {len(raw.classes)} classes")
    pretrained = load_pretrained(spec.model, spec.resolve, spec.data.image_size)
    check_search_against_model(spec, pretrained.num_blocks)
    return Prepared(spec, pretrained, encode(raw, pretrained), splits, pick_device(device))


def labelled_split(spec: Spec, cache_dir: Path | None = None) -> tuple[RawData, Splits]:
    """The spec's examples and labels, and their split (no model needed); ``cache_dir`` holds
    the record of the image files decoded before (`images.DecodedRecord`)."""
    raw = load_raw(spec, cache_dir)
    data = spec.data
    return raw, split_indices(raw.labels, data.val_fraction, data.test_fraction, spec.study.seed, raw.classes)


def check_search_against_model(spec: Spec, num_blocks: int) -> None:
    """[search] may not unfreeze more blocks than the model has."""
    for key, lowest in (("unfrozen_blocks", 0), ("blocks_per_stage", 1)):
        value = getattr(spec.search, key)
        if bounds(value)[1] > num_blocks:
            shown = list(value) if isinstance(value, tuple) else value
            raise UserError(
                f"{spec.source_path}: [search] {key} is {shown}, but {spec.model.name} has "
                f"{num_blocks} blocks; use {lowest}–{num_blocks}"
            )


class StudyRuntime:
    """The loaded model, encoded data, split and device that every run in this process shares,
    and where their frozen-prefix states come from.

    Args:
        prepared: what `prepare` loaded.
        cache: the frozen-prefix cache (``PrefixCache(None)``: in this process's memory only);
            ``None`` runs the frozen prefix on every batch.

    Example:
        >>> runtime = StudyRuntime(prepare(spec, "cpu"), PrefixCache(None))
        >>> result = fit(runtime, TrialConfig(0, 3e-3, 2), seed=0)
    """

    def __init__(self, prepared: Prepared, cache: PrefixCache | None) -> None:
        self.spec = prepared.spec
        self.pretrained = prepared.pretrained
        self.data = prepared.data
        self.splits = prepared.splits
        self.device = prepared.device
        self.states = PrefixStates(cache, self.device, self.spec.train.batch_size * 4)
        self.pretrained.to(self.device)  # once: every run's copies are made there
        self._pretrained_features: dict[str, torch.Tensor] = {}

    @property
    def num_classes(self) -> int:
        return len(self.data.raw.classes)

    def source(self, model: BlockModel, split: str, cut: int) -> StateSource:
        """The split's examples as states entering block ``cut``.

        Only blocks below ``cut`` run here, and in every run those are pretrained and frozen (in
        eval mode), so their output is cached unless the cache is off or the preprocessing is random.
        """
        indices = self._indices(split)
        return self.states.source(model, self.data, indices, cut, self._key(indices))

    def warm(self, model: BlockModel, split: str, cut: int) -> None:
        """Have the states of ``source(model, split, cut)`` cached, without handing them out."""
        indices = self._indices(split)
        self.states.cached(model, self.data, indices, cut, self._key(indices))

    def frozen_model(self) -> BlockModel:
        """The pretrained network with a new head and nothing to train (its head draws no
        randomness from the runs')."""
        with torch.random.fork_rng(devices=[]):
            return self.pretrained.build(self.num_classes, trainable_from=self.pretrained.num_blocks).to(
                self.device
            )

    def pretrained_features(self, split: str) -> torch.Tensor:
        """The pretrained model's pooled features of the split, in order (computed once)."""
        if split not in self._pretrained_features:
            model = self.frozen_model()
            top = self.source(model, split, model.num_blocks)
            self._pretrained_features[split] = pooled_features(
                model, top, self.states.batch_size, self.device
            )
        return self._pretrained_features[split]

    def _indices(self, split: str) -> np.ndarray:
        return getattr(self.splits, split)

    def _key(self, indices: np.ndarray) -> dict:
        return {
            "model": self.pretrained.digest,
            "data": self._data_digest,
            "split": hashlib.sha256(indices.tobytes()).hexdigest()[:16],
            "device": self.device.type,
            "dtype": "bfloat16" if self.device.type == "cuda" else "float32",
        }

    @functools.cached_property
    def _data_digest(self) -> str:
        return self.data.fingerprint()
