"""Every family: the block count, freezing leaves exactly the expected parameters trainable, and a
training step runs. Small configs and weights=None (the real pretrained MiniLM for BERT)."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm
from transformers import (
    AutoModel,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    RobertaConfig,
    RobertaModel,
)

from sweeper.backbones import family_of, to_block_model
from sweeper.backbones.loading import _transformers_location
from sweeper.param_groups import build_param_groups, make_optimizer
from sweeper.stages import apply_stage, plan_stages
from tests.conftest import MINILM


def _tiny_vit():
    return tvm.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32
    )


def _tiny_text(config_cls, model_cls, **extra):
    config = config_cls(vocab_size=100, max_position_embeddings=32, **extra)
    return model_cls(config)


def _minilm():
    return AutoModel.from_pretrained(_transformers_location(MINILM, None))


# (builder, family name, number of blocks, input kind)
CASES = {
    "resnet18": (lambda: tvm.resnet18(weights=None), "resnet", 4, "image"),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(weights=None), "efficientnet", 8, "image"),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(weights=None), "mobilenet_v3", 12, "image"),
    "convnext_tiny": (lambda: tvm.convnext_tiny(weights=None), "convnext", 4, "image"),
    "vit": (_tiny_vit, "vit", 3, "image"),
    "bert": (
        lambda: _tiny_text(
            BertConfig,
            BertModel,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
        ),
        "bert",
        3,
        "text",
    ),
    "roberta": (
        lambda: _tiny_text(
            RobertaConfig,
            RobertaModel,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            pad_token_id=1,
        ),
        "bert",
        2,
        "text",
    ),
    "distilbert": (
        lambda: _tiny_text(DistilBertConfig, DistilBertModel, dim=16, n_layers=2, n_heads=2, hidden_dim=32),
        "distilbert",
        2,
        "text",
    ),
    "minilm (pretrained)": (_minilm, "bert", 6, "text"),
}


def _inputs(kind: str, batch: int = 4):
    if kind == "image":
        return {"pixel_values": torch.randn(batch, 3, 32, 32)}
    ids = torch.randint(5, 90, (batch, 7))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(params=list(CASES), scope="module")
def case(request):
    build, family, blocks, kind = CASES[request.param]
    return build(), family, blocks, kind


def test_counting_blocks_builds_nothing_and_draws_no_randomness(case):
    module, family, blocks, _ = case
    state = torch.random.get_rng_state()
    assert family_of(module).num_blocks(module) == blocks
    assert torch.equal(torch.random.get_rng_state(), state)


def test_family_and_block_count(case):
    module, family, blocks, _ = case
    assert family_of(module).name == family
    assert to_block_model(module, num_classes=3).num_blocks == blocks


def test_freezing_leaves_exactly_the_planned_parameters_trainable(case):
    module, _, blocks, _ = case
    model = to_block_model(module, num_classes=3)
    plan = plan_stages(blocks, unfrozen_blocks=2, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    head = {id(p) for p in model.head.parameters()}
    neck = {id(p) for p in model.neck.parameters()}

    def trainable():
        return {id(p) for p in model.parameters() if p.requires_grad}

    def block_params(*indices):
        return {id(p) for i in indices for p in model.blocks[i].parameters()}

    apply_stage(model, plan, plan.stages[0])  # head only
    assert trainable() == head
    apply_stage(model, plan, plan.stages[1])  # + top block (and the neck that sits on it)
    assert trainable() == head | neck | block_params(blocks - 1)
    apply_stage(model, plan, plan.stages[2])  # + the block below
    assert trainable() == head | neck | block_params(blocks - 1, blocks - 2)
    assert not ({id(p) for p in model.stem.parameters()} & trainable())


def test_a_training_step_moves_only_trainable_parameters(case):
    module, _, blocks, kind = case
    torch.manual_seed(0)
    model = to_block_model(module, num_classes=3)
    plan = plan_stages(blocks, unfrozen_blocks=1, blocks_per_stage=1, head_epochs=1, stage_epochs=1)
    optimizer = make_optimizer(build_param_groups(model, plan, 0.1), 1e-2, 0.0)
    apply_stage(model, plan, plan.stages[1])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    inputs = _inputs(kind)
    logits = model.forward_from(model.prefix(inputs, blocks - 1), blocks - 1, first_trainable=blocks - 1)
    assert logits.shape == (4, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert any(name.startswith("head.") for name in moved)
    assert any(name.startswith(f"blocks.{blocks - 1}.") for name in moved)
    assert all(name.startswith(("head.", f"blocks.{blocks - 1}.", "neck.")) for name in moved), moved


def test_prefix_then_rest_equals_the_whole_forward(case):
    module, _, blocks, kind = case
    model = to_block_model(module, num_classes=3).eval()
    inputs = _inputs(kind)
    with torch.no_grad():
        whole = model(inputs)
        split = model.forward_from(model.prefix(inputs, blocks // 2), blocks // 2)
    torch.testing.assert_close(whole, split, rtol=1e-4, atol=1e-5)


def test_pooled_features_then_the_head_equal_the_whole_forward(case):
    # head-only stages train on cached pooled features: that path must be the same function
    module, _, blocks, kind = case
    model = to_block_model(module, num_classes=3).eval()
    inputs = _inputs(kind)
    with torch.no_grad():
        whole = model(inputs)
        features = model.prefix(inputs, model.pooled)
        from_features = model.forward_from(features, model.pooled)
        carried = model.run_blocks(model.prefix(inputs, blocks), blocks, model.pooled)
    assert set(features) == {"features"} and features["features"].shape == (4, model.feature_dim)
    torch.testing.assert_close(whole, from_features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features["features"], carried["features"], rtol=1e-4, atol=1e-5)
