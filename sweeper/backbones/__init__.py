"""Backbone adapters: each model family cut into stem → blocks → neck, plus a head swap."""

from sweeper.backbones import text, vision  # noqa: F401  (register the families)
from sweeper.backbones.base import FAMILIES, BlockModel, Family, Parts, family_of, to_block_model
from sweeper.backbones.loading import Pretrained, load_pretrained

__all__ = [
    "FAMILIES",
    "BlockModel",
    "Family",
    "Parts",
    "Pretrained",
    "family_of",
    "load_pretrained",
    "to_block_model",
]
