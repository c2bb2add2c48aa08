"""The backbone protocol: a pretrained network as stem → ordered blocks → neck, plus a new head.

Training code only sees `BlockModel`; each model family is one small `Family` class that knows how
to cut its network into these parts. Intermediate values travel as a *state*: a dict of tensors
batched on dim 0 (``{"x": ...}`` for CNNs, hidden states plus attention mask for encoders), so any
state can be cached and sliced like a dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

State = dict[str, torch.Tensor]


class BlockModel(nn.Module):
    """A backbone cut into blocks, input → output, and a linear head on its pooled features.

    Args:
        stem: maps the model inputs (a dict of tensors) to the first state; never trained.
        blocks: the units that a study unfreezes from the top, input → output.
        neck: maps the last state to a (batch, feature_dim) tensor; trains with the top block.
        feature_dim: width of the neck's output.
        num_classes: outputs of the new head.
        compact: optional state → state that drops padding before a block runs (text).
        lora_modules: the kinds of layer inside a block that LoRA may adapt (its family's say).

    Example:
        >>> model = BlockModel(stem, [b1, b2], neck, feature_dim=64, num_classes=3)
        >>> logits = model.forward_from(model.prefix(inputs, 1), 1)
    """

    def __init__(
        self,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        neck: nn.Module,
        feature_dim: int,
        num_classes: int,
        compact: Callable[[State], State] | None = None,
        lora_modules: tuple[type[nn.Module], ...] = (nn.Linear,),
    ) -> None:
        super().__init__()
        self.lora_modules = lora_modules
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.neck = neck
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self._compact = compact or (lambda state: state)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def pooled(self) -> int:
        """The position after the neck: a state there holds the pooled ``features``."""
        return self.num_blocks + 1

    def prefix(self, inputs: State, upto: int) -> State:
        """The state entering block ``upto`` (stem, then blocks[:upto]); ``pooled``: the features."""
        return self.run_blocks(self.stem(inputs), 0, upto)

    def run_blocks(self, state: State, start: int, stop: int) -> State:
        """Carry a state entering block ``start`` to the state entering block ``stop``."""
        if start == self.pooled:
            return state
        for block in self.blocks[start:stop]:
            state = block(self._compact(state))
        if stop == self.pooled:
            state = {"features": self.neck(self._compact(state))}
        return state

    def forward_from(self, state: State, start: int, first_trainable: int | None = None) -> torch.Tensor:
        """Logits from a state entering block ``start`` (or from pooled features).

        Blocks below ``first_trainable`` run without autograd: they are frozen in this stage.
        """
        return self.head(self.features_from(state, start, first_trainable))

    def features_from(self, state: State, start: int, first_trainable: int | None = None) -> torch.Tensor:
        """The pooled features (what the head reads) from a state entering block ``start``."""
        if start == self.pooled:
            return state["features"]
        first_trainable = self.num_blocks if first_trainable is None else first_trainable
        state = self._compact(state)
        with torch.no_grad():
            for block in self.blocks[start:first_trainable]:
                state = block(state)
        for block in self.blocks[max(start, first_trainable) :]:
            state = block(state)
        if first_trainable >= self.num_blocks:
            with torch.no_grad():
                return self.neck(state)
        return self.neck(state)

    def forward(self, inputs: State) -> torch.Tensor:
        return self.forward_from(self.stem(inputs), 0, first_trainable=0)


@dataclass(frozen=True)
class Parts:
    """A pretrained network read as stem → blocks → neck: its own modules, wrapped, never copied."""

    stem: nn.Module
    blocks: Sequence[nn.Module]
    neck: nn.Module
    feature_dim: int
    compact: Callable[[State], State] | None = None


class Family:
    """One model family: recognises its networks and reads them as `Parts`.

    A new family is one subclass registered with `register` that says which networks it
    `matches` and what their `parts` are; nothing else names architectures.
    """

    name: ClassVar[str]
    input_kind: ClassVar[str] = "image"  # "image" | "text"
    # torchvision model names of this family (prefixes), for the list of supported names
    torchvision_names: ClassVar[tuple[str, ...]] = ()
    # the kinds of layer inside its blocks that LoRA may adapt (CNN families add convolutions)
    lora_modules: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        raise NotImplementedError

    @classmethod
    def parts(cls, module: nn.Module) -> Parts:
        raise NotImplementedError

    @classmethod
    def num_blocks(cls, module: nn.Module) -> int:
        """The network's block count; reading the parts builds nothing (no head, no RNG draw)."""
        return len(cls.parts(module).blocks)

    @classmethod
    def cut(cls, module: nn.Module, num_classes: int) -> BlockModel:
        """The network as a `BlockModel` with a new head of ``num_classes`` outputs."""
        parts = cls.parts(module)
        return BlockModel(
            parts.stem,
            parts.blocks,
            parts.neck,
            parts.feature_dim,
            num_classes,
            parts.compact,
            cls.lora_modules,
        )


FAMILIES: list[type[Family]] = []


def register(family: type[Family]) -> type[Family]:
    FAMILIES.append(family)
    return family


def family_of(module: nn.Module) -> type[Family]:
    for family in FAMILIES:
        if family.matches(module):
            return family
    known = ", ".join(f.name for f in FAMILIES)
    raise LookupError(f"{type(module).__name__} is not a supported backbone; supported: {known}")


def to_block_model(module: nn.Module, num_classes: int) -> BlockModel:
    """Cut a pretrained network of any registered family into a `BlockModel` with a new head."""
    return family_of(module).cut(module, num_classes)


class TensorBlock(nn.Module):
    """Wraps a tensor → tensor module as a state → state block."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, state: State) -> State:
        return {"x": self.module(state["x"])}


class ImageStem(TensorBlock):
    def forward(self, inputs: State) -> State:  # type: ignore[override]
        return {"x": self.module(inputs["pixel_values"])}
