"""Fine-tuning methods: how the backbone trains once a stage unfreezes part of it.

A method decides, and nothing else in the training path does: what it changes in the fresh model
(`Method.prepare`: LoRA's adapters), which parameters train in each stage (and which parts are in
train mode), the optimizer's param groups with their ``lr_scale`` (the one place a scale turns into
a learning rate is `param_groups.set_learning_rate`), and what a user would ship. `fit` picks the
method of a configuration with `method_for`; `train_staged` calls it at the start of each stage.
A new method is one `Method` subclass in a module here, registered with `@register_method`,
imported below, and named in `records.METHOD_NAMES` (the names a spec may give).
"""

from sweeper.methods.base import METHODS, Method, method_for, register_method, ship_bytes, trainable_params
from sweeper.methods.lora import LoRA
from sweeper.methods.unfreeze import LayerDecay, StagedUnfreezing

__all__ = [
    "METHODS",
    "LayerDecay",
    "LoRA",
    "Method",
    "StagedUnfreezing",
    "method_for",
    "register_method",
    "ship_bytes",
    "trainable_params",
]
