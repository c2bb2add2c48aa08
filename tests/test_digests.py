"""Digests name content: the same parts in any order give one digest, any change another."""

from __future__ import annotations

import torch

from sweeper.digests import digest, tensor_digest


def test_the_order_of_the_parts_does_not_matter_and_their_values_do():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_one_element_a_dtype_or_a_shape_changes_a_tensor_digest():
    base = {"x": torch.arange(6, dtype=torch.float32)}
    changed = base["x"].clone()
    changed[3] += 1e-6
    variants = [{"x": changed}, {"x": base["x"].double()}, {"x": base["x"].reshape(2, 3)}, {"y": base["x"]}]
    assert len({tensor_digest(base), *(tensor_digest(v) for v in variants)}) == 5
    assert tensor_digest(base) == tensor_digest({"x": torch.arange(6, dtype=torch.float32)})
