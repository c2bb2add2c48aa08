"""torchvision families: ResNet, EfficientNet, MobileNetV3, ConvNeXt, ViT."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from sweeper.backbones.base import Family, ImageStem, Parts, State, TensorBlock, register

_CONVOLUTIONS_AND_LINEAR = (nn.Conv2d, nn.Linear)  # what LoRA may adapt in a CNN family's blocks


def _pooled_neck(*extra: nn.Module) -> TensorNeck:
    return TensorNeck(nn.Sequential(nn.AdaptiveAvgPool2d(1), *extra, nn.Flatten(1)))


class TensorNeck(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, state: State) -> torch.Tensor:
        return self.module(state["x"])


@register
class ResNetFamily(Family):
    """stem = conv1, bn1, relu, maxpool; blocks = layer1..layer4 (resnet50 has 4 blocks)."""

    name = "resnet"
    torchvision_names = ("resnet", "wide_resnet", "resnext")
    lora_modules = _CONVOLUTIONS_AND_LINEAR

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, tvm.ResNet)

    @classmethod
    def parts(cls, module: nn.Module) -> Parts:
        stem = nn.Sequential(module.conv1, module.bn1, module.relu, module.maxpool)
        blocks = [TensorBlock(getattr(module, f"layer{i}")) for i in range(1, 5)]
        return Parts(ImageStem(stem), blocks, _pooled_neck(), module.fc.in_features)


@register
class EfficientNetFamily(Family):
    """stem = features[0]; blocks = features[1:] (the MBConv stages, then the last 1x1 conv)."""

    name = "efficientnet"
    torchvision_names = ("efficientnet",)
    lora_modules = _CONVOLUTIONS_AND_LINEAR

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, tvm.EfficientNet)

    @classmethod
    def parts(cls, module: nn.Module) -> Parts:
        return _feature_parts(module, module.classifier[-1].in_features)


@register
class MobileNetV3Family(Family):
    """stem = features[0]; blocks = features[1:] (inverted residuals, then the last conv)."""

    name = "mobilenet_v3"
    torchvision_names = ("mobilenet_v3",)
    lora_modules = _CONVOLUTIONS_AND_LINEAR

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, tvm.MobileNetV3)

    @classmethod
    def parts(cls, module: nn.Module) -> Parts:
        return _feature_parts(module, module.classifier[0].in_features)


def _feature_parts(module: nn.Module, feature_dim: int) -> Parts:
    features = list(module.features)
    blocks = [TensorBlock(block) for block in features[1:]]
    return Parts(ImageStem(features[0]), blocks, _pooled_neck(), feature_dim)


@register
class ConvNeXtFamily(Family):
    """stem = features[0]; blocks = the 4 stages (each with the downsampling before it)."""

    name = "convnext"
    torchvision_names = ("convnext",)
    lora_modules = _CONVOLUTIONS_AND_LINEAR

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, tvm.ConvNeXt)

    @classmethod
    def parts(cls, module: nn.Module) -> Parts:
        f = module.features
        stages = [f[1]] + [nn.Sequential(f[i], f[i + 1]) for i in range(2, len(f) - 1, 2)]
        blocks = [TensorBlock(stage) for stage in stages]
        norm = module.classifier[0]  # LayerNorm2d on the pooled map: trains with the top block
        return Parts(ImageStem(f[0]), blocks, _pooled_neck(norm), module.classifier[-1].in_features)


class _ViTStem(nn.Module):
    def __init__(self, vit: tvm.VisionTransformer) -> None:
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, inputs: State) -> State:
        x = self.conv_proj(inputs["pixel_values"])  # (n, hidden, h/p, w/p)
        x = x.flatten(2).transpose(1, 2)
        cls_token = self.class_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls_token, x], dim=1)
        return {"x": self.dropout(x + self.pos_embedding)}


class _ClassTokenNeck(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, state: State) -> torch.Tensor:
        return self.norm(state["x"])[:, 0]


@register
class ViTFamily(Family):
    """stem = patch embedding + class token + positions; blocks = the encoder layers."""

    name = "vit"
    torchvision_names = ("vit_",)
    lora_modules = (nn.Linear,)  # the feed-forward layers (attention's projections are not modules it calls)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, tvm.VisionTransformer)

    @classmethod
    def parts(cls, module: nn.Module) -> Parts:
        blocks = [TensorBlock(layer) for layer in module.encoder.layers]
        return Parts(_ViTStem(module), blocks, _ClassTokenNeck(module.encoder.ln), module.hidden_dim)
