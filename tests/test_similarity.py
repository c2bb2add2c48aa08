"""Linear CKA, relative weight change and the linear probe against values known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sweeper.similarity import linear_cka, linear_probe_score, relative_weight_change


@pytest.fixture
def features() -> torch.Tensor:
    return torch.randn(500, 16, generator=torch.Generator().manual_seed(0))


def test_identical_features_give_one(features):
    assert linear_cka(features, features) == pytest.approx(1.0, abs=1e-12)


def test_cka_ignores_orthogonal_transforms_and_isotropic_scaling(features):
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    assert linear_cka(features, 5.0 * features @ rotation) == pytest.approx(1.0, abs=1e-9)
    # and a shift: features are centered first
    assert linear_cka(features, features + 3.0) == pytest.approx(1.0, abs=1e-9)


def test_unrelated_random_features_give_nearly_zero():
    rng = np.random.default_rng(2)
    # for independent features E[CKA] shrinks like (dims / examples); here about 0.005
    assert linear_cka(rng.normal(size=(4000, 10)), rng.normal(size=(4000, 10))) < 0.02


def test_one_dimensional_cka_is_the_squared_correlation():
    x = np.array([[1.0], [2.0], [3.0], [4.0], [6.0]])
    y = np.array([[2.0], [1.0], [4.0], [3.0], [5.0]])
    assert linear_cka(x, y) == pytest.approx(np.corrcoef(x[:, 0], y[:, 0])[0, 1] ** 2)


def test_cka_needs_the_same_examples():
    with pytest.raises(ValueError, match="must match"):
        linear_cka(np.zeros((4, 2)), np.zeros((5, 2)))


def test_relative_weight_change_is_the_norm_ratio():
    reference = nn.Linear(4, 3)
    current = nn.Linear(4, 3)
    current.load_state_dict(reference.state_dict())
    assert relative_weight_change(current, reference) == 0.0
    with torch.no_grad():
        for parameter in current.parameters():
            parameter.mul_(1.1)  # every weight 10% larger: ||w - w0|| = 0.1 ||w0||
    assert relative_weight_change(current, reference) == pytest.approx(0.1, rel=1e-6)


def test_linear_probe_scores_separable_data_near_one_and_noise_near_chance():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=600)
    centers = rng.normal(scale=5.0, size=(3, 8))
    separable = centers[labels] + rng.normal(size=(600, 8))
    assert linear_probe_score(separable[:400], labels[:400], separable[400:], labels[400:]) > 0.95
    noise = rng.normal(size=(600, 8))
    assert abs(linear_probe_score(noise[:400], labels[:400], noise[400:], labels[400:]) - 1 / 3) < 0.12
