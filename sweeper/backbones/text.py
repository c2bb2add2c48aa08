"""transformers encoder families: BERT-like (BERT, RoBERTa, MiniLM, ...) and DistilBERT."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from sweeper.backbones.base import Family, Parts, State, register


class _EncoderStem(nn.Module):
    def __init__(self, embeddings: nn.Module) -> None:
        super().__init__()
        self.embeddings = embeddings

    def forward(self, inputs: State) -> State:
        hidden = self.embeddings(input_ids=inputs["input_ids"])
        return {"hidden": hidden, "attention_mask": inputs["attention_mask"]}


class _EncoderBlock(nn.Module):
    def __init__(self, layer: nn.Module, config) -> None:
        super().__init__()
        self.layer = layer
        self._config = config

    def forward(self, state: State) -> State:
        hidden, mask = state["hidden"], state["attention_mask"]
        mask4d = create_bidirectional_mask(config=self._config, inputs_embeds=hidden, attention_mask=mask)
        out = self.layer(hidden, attention_mask=mask4d)
        hidden = out[0] if isinstance(out, tuple) else out
        return {"hidden": hidden, "attention_mask": mask}


class _MeanPool(nn.Module):
    """Mean of the token states under the attention mask (sentence-transformers' pooling)."""

    def forward(self, state: State) -> torch.Tensor:
        mask = state["attention_mask"].unsqueeze(-1).to(state["hidden"].dtype)
        return (state["hidden"] * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _drop_padding(state: State) -> State:
    """Trim the padding columns every row of this batch has (tokenizers pad on the right)."""
    length = int(state["attention_mask"].sum(1).max())
    if length == state["attention_mask"].shape[1]:
        return state
    return {key: value[:, :length] for key, value in state.items()}


class _EncoderFamily(Family):
    """stem = embeddings; blocks = the encoder's layer list; neck = masked mean pooling (any
    pooler is dropped). A subclass names where its layers are (``layers``, a dotted path)."""

    input_kind = "text"
    layers: ClassVar[str]
    lora_modules = (nn.Linear,)  # attention's query, key, value and output, the feed-forward layers

    @classmethod
    def _layers(cls, module: nn.Module) -> nn.ModuleList | None:
        found = module
        for name in cls.layers.split("."):
            found = getattr(found, name, None)
        return found if isinstance(found, nn.ModuleList) else None

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return (
            isinstance(module, PreTrainedModel)
            and hasattr(module, "embeddings")
            and cls._layers(module) is not None
        )

    @classmethod
    def parts(cls, module: nn.Module) -> Parts:
        config = module.config
        blocks = [_EncoderBlock(layer, config) for layer in cls._layers(module)]
        width = config.hidden_size if hasattr(config, "hidden_size") else config.dim
        return Parts(_EncoderStem(module.embeddings), blocks, _MeanPool(), width, compact=_drop_padding)


@register
class BertLikeFamily(_EncoderFamily):
    """BERT, RoBERTa, MiniLM and other BERT-like encoders."""

    name = "bert"
    layers = "encoder.layer"


@register
class DistilBertFamily(_EncoderFamily):
    """DistilBERT."""

    name = "distilbert"
    layers = "transformer.layer"
