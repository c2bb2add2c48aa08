"""Load pretrained weights: torchvision by weights enum name or local file, transformers by hub id
or local directory (or a model directory shipped inside an installed Python package)."""

from __future__ import annotations

import copy
import functools
import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeper.backbones.base import FAMILIES, BlockModel, Family, family_of
from sweeper.digests import tensor_digest
from sweeper.errors import UserError
from sweeper.spec import ModelSection

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HEAD_PREFIXES = ("fc.", "classifier.", "heads.", "head.")
PACKAGE_PREFIX = "package:"
RANDOM_INIT_SEED = 0


@dataclass
class Pretrained:
    """A loaded pretrained network, its family, and how to turn raw examples into its inputs."""

    module: nn.Module
    family: type[Family]
    tokenizer: Any | None = None  # text families
    image_transform: Any | None = None  # image families
    max_length: int = 128

    @functools.cached_property
    def digest(self) -> str:
        """A digest of the pretrained weights (every tensor of the state dict, by name): the
        cache key's model part, and the study identity's."""
        return tensor_digest(dict(self.module.state_dict()))

    @functools.cached_property
    def num_blocks(self) -> int:
        return self.family.num_blocks(self.module)

    def build(self, num_classes: int, trainable_from: int = 0) -> BlockModel:
        """The pretrained network cut into blocks, with a new head, ready to train from block
        ``trainable_from`` up.

        The blocks from ``trainable_from`` up, and the neck (it trains with the top block), are
        fresh copies. The stem and the blocks below are the pretrained modules themselves, shared
        by every model built here: they are never trained, so a trial only pays to copy what it
        trains (nothing but its new head, for feature extraction).
        """
        model = self.family.cut(self.module, num_classes)
        if trainable_from < model.num_blocks:
            for index in range(trainable_from, model.num_blocks):
                model.blocks[index] = copy.deepcopy(model.blocks[index])
            model.neck = copy.deepcopy(model.neck)
        return model

    def to(self, device: torch.device) -> Pretrained:
        """Move the pretrained weights to the training device once, so that each trial's copies
        are made there (channels_last for CNNs on a GPU)."""
        self.module.to(device)
        if device.type == "cuda" and self.family.input_kind == "image":
            self.module.to(memory_format=torch.channels_last)
        return self


def load_pretrained(
    model: ModelSection, resolve=lambda p: Path(p), image_size: int | None = None
) -> Pretrained:
    """Load the spec's model; a bad name or weights value is one UserError saying what is allowed.

    What the checkpoint does not hold (all of it with ``weights = "none"``, a pooler it lacks) is
    initialised from a fixed seed, so that every process loads the same weights (the study's
    identity holds their digest) and the caller's random state is left as it was. A transformers
    model takes ``weights = "none"`` too: its config alone (a folder holding no weights will do)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(RANDOM_INIT_SEED)  # initialised on the CPU
        if model.source == "torchvision":
            return _load_torchvision(model, resolve, image_size)
        return _load_transformers(model, resolve)


def _load_torchvision(model: ModelSection, resolve, image_size: int | None) -> Pretrained:
    from torchvision import models as tvm

    available = tvm.list_models(module=tvm)
    if model.name not in available:
        raise UserError(
            f"[model] name is {model.name!r}, but torchvision has no such classification model; "
            f"use one of: {', '.join(n for n in available if _is_supported_torchvision(n))}"
        )
    weights_enum = tvm.get_model_weights(model.name)
    weights_value = model.weights
    if weights_value.lower() == "none":
        module, weights = tvm.get_model(model.name, weights=None), None
    elif _looks_like_file(weights_value):
        module, weights = tvm.get_model(model.name, weights=None), None
        _load_local_state_dict(module, resolve(weights_value))
    else:
        weights = _weights_by_name(weights_enum, weights_value, model.name)
        try:
            module = tvm.get_model(model.name, weights=weights)
        except Exception as exc:  # download refused, corrupt cache, ...
            raise UserError(
                f"[model] weights {weights_value!r} of {model.name} could not be loaded ({exc}); "
                'without internet, pass a local .pth/.safetensors file or weights = "none"'
            ) from None
    family = _family_or_error(module, model.name)
    return Pretrained(module, family, image_transform=_image_transform(weights, image_size))


def _is_supported_torchvision(name: str) -> bool:
    """Whether a registered family reads this torchvision model (by the names it declares)."""
    return any(name.startswith(family.torchvision_names) for family in FAMILIES if family.torchvision_names)


def _looks_like_file(value: str) -> bool:
    return value.endswith((".pt", ".pth", ".bin", ".safetensors")) or "/" in value


def _weights_by_name(weights_enum, value: str, model_name: str):
    if value == "DEFAULT":
        return weights_enum.DEFAULT
    name = value.split(".")[-1]  # accept "ResNet50_Weights.IMAGENET1K_V2" too
    try:
        return weights_enum[name]
    except KeyError:
        allowed = [
            "DEFAULT",
            *weights_enum.__members__,
            "none",
            "a local .pth or .safetensors file",
        ]
        raise UserError(
            f"[model] weights is {value!r}, but {model_name} has no such weights; "
            f"use one of: {', '.join(allowed)}"
        ) from None


def _load_local_state_dict(module: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise UserError(f"[model] weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"[model] weights file {path} could not be read: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    own = module.state_dict()
    # the head is replaced anyway: a checkpoint trained for another number of classes is fine
    state = {
        k: v
        for k, v in state.items()
        if not (k.startswith(_HEAD_PREFIXES) and k in own and own[k].shape != v.shape)
    }
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(_HEAD_PREFIXES)]
    if missing or unexpected:
        raise UserError(
            f"[model] weights file {path} does not fit the model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _image_transform(weights, image_size: int | None):
    from torchvision.transforms import v2

    if weights is not None and image_size is None:
        return weights.transforms()
    size = image_size or 224
    return v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
        ]
    )


def _load_transformers(model: ModelSection, resolve) -> Pretrained:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    random_weights = _transformers_weights(model) == "none"
    location = _transformers_location(model.name, resolve)
    remote = model.trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=remote)
        if random_weights:  # the same architecture, initialised anew (the caller seeded it)
            config = AutoConfig.from_pretrained(location, trust_remote_code=remote)
            module = AutoModel.from_config(config, trust_remote_code=remote, dtype=torch.float32)
        else:  # float32 master weights whatever the checkpoint holds: training runs under autocast
            module = AutoModel.from_pretrained(location, trust_remote_code=remote, dtype=torch.float32)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        config_only = not random_weights and (Path(location) / "config.json").is_file()
        raise UserError(
            f"[model] name is {model.name!r}, but no transformers model could be loaded from it "
            f"({first_line}); use a hub id, a local model directory, or "
            f"'{PACKAGE_PREFIX}<python package>/<folder>'"
            + ('; a folder with a config and no weights loads with weights = "none"' if config_only else "")
        ) from None
    family = _family_or_error(module, model.name)
    return Pretrained(module, family, tokenizer=tokenizer, max_length=model.max_length)


def _transformers_weights(model: ModelSection) -> str:
    """``DEFAULT`` (the checkpoint's weights) or ``none`` (its config alone, randomly initialised:
    the control that measures what pretraining is worth)."""
    if model.weights.lower() == "none":
        return "none"
    if model.weights != "DEFAULT":
        raise UserError(
            f'[model] weights is {model.weights!r}, but a transformers model takes "DEFAULT" (the '
            'weights of its checkpoint) or "none" (its architecture with random weights)'
        )
    return "DEFAULT"


def _transformers_location(name: str, resolve) -> str:
    if name.startswith(PACKAGE_PREFIX):
        package, _, folder = name.removeprefix(PACKAGE_PREFIX).partition("/")
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError:
            raise UserError(
                f"[model] name is {name!r}, but Python package {package!r} is not installed"
            ) from None
        return str(Path(str(root)) / folder)
    local = resolve(name)
    if local.is_dir():
        return str(local)
    return name  # a hub id


def _family_or_error(module: nn.Module, name: str) -> type[Family]:
    try:
        return family_of(module)
    except LookupError as exc:
        raise UserError(f"[model] name is {name!r}: {exc}") from None
