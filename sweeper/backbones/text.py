"""transformers encoder families: BERT-like (BERT, RoBERTa, MiniLM, ...) and DistilBERT."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from sweeper.backbones.base import BlockModel, Family, State, register


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


def _cut_encoder(module: PreTrainedModel, layers: nn.ModuleList, num_classes: int) -> BlockModel:
    blocks = [_EncoderBlock(layer, module.config) for layer in layers]
    return BlockModel(
        _EncoderStem(module.embeddings),
        blocks,
        _MeanPool(),
        module.config.hidden_size if hasattr(module.config, "hidden_size") else module.config.dim,
        num_classes,
        compact=_drop_padding,
    )


@register
class BertLikeFamily(Family):
    """stem = embeddings; blocks = encoder.layer; neck = masked mean pooling (pooler dropped)."""

    name = "bert"
    input_kind = "text"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        encoder = getattr(module, "encoder", None)
        return (
            isinstance(module, PreTrainedModel)
            and hasattr(module, "embeddings")
            and isinstance(getattr(encoder, "layer", None), nn.ModuleList)
        )

    @classmethod
    def cut(cls, module: nn.Module, num_classes: int) -> BlockModel:
        return _cut_encoder(module, module.encoder.layer, num_classes)


@register
class DistilBertFamily(Family):
    """stem = embeddings; blocks = transformer.layer; neck = masked mean pooling."""

    name = "distilbert"
    input_kind = "text"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        transformer = getattr(module, "transformer", None)
        return (
            isinstance(module, PreTrainedModel)
            and hasattr(module, "embeddings")
            and isinstance(getattr(transformer, "layer", None), nn.ModuleList)
        )

    @classmethod
    def cut(cls, module: nn.Module, num_classes: int) -> BlockModel:
        return _cut_encoder(module, module.transformer.layer, num_classes)
