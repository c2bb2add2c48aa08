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


@pytest.mark.slow
@pytest.mark.parametrize("case", ["torchvision weights none", "transformers without a pooler"])
def test_randomly_initialised_weights_are_the_same_in_every_process(case, bert_without_pooler):
    """The study's identity holds the weights' digest: a worker process must load what the
    study's first process loaded."""
    if case == "torchvision weights none":
        args = ("torchvision", "resnet18", "none")
    else:
        args = ("transformers", str(bert_without_pooler), "DEFAULT")
    assert _digest_in_a_new_process(*args) == _digest_in_a_new_process(*args)


def test_loading_a_model_leaves_the_caller_s_random_state_as_it_was():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_pretrained(ModelSection(source="torchvision", name="resnet18", weights="none"))
    assert torch.equal(torch.rand(3), expected)
