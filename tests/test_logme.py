"""LogME against cases worked out by hand and against the properties a transferability score needs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweeper.logme import fixed_point, log_evidence, logme


def test_the_evidence_of_one_example_is_the_normal_density_worked_out_by_hand():
    # n = D = 1, F = [[1]], y = [1], α = β = 1: y ~ N(0, 1/α + 1/β) = N(0, 2),
    # so log p = −½ log(2π · 2) − 1² / (2 · 2)
    by_hand = -0.5 * math.log(4 * math.pi) - 0.25
    assert log_evidence(np.array([[1.0]]), np.array([1.0]), alpha=1.0, beta=1.0) == pytest.approx(by_hand)


@pytest.mark.parametrize("n, d", [(7, 3), (3, 7), (5, 5)])
def test_the_evidence_is_the_marginal_likelihood_whatever_the_shape(n, d):
    # y ~ N(0, F Fᵀ/α + I/β): the multivariate normal log-density, computed directly
    rng = np.random.default_rng(n * 10 + d)
    features, target = rng.normal(size=(n, d)), rng.normal(size=n)
    alpha, beta = 0.7, 2.5
    covariance = features @ features.T / alpha + np.eye(n) / beta
    _, log_det = np.linalg.slogdet(covariance)
    direct = -0.5 * (n * math.log(2 * math.pi) + log_det + target @ np.linalg.solve(covariance, target))
    assert log_evidence(features, target, alpha, beta) == pytest.approx(direct, rel=1e-10)


def test_the_fixed_point_is_the_one_worked_out_by_hand():
    # F = (1, 0)ᵀ, y = (2, 1): cov = diag(1/α + 1/β, 1/β), maximised at 1/β = y₂² = 1 and
    # 1/α + 1/β = y₁² = 4, so α = 1/3, β = 1 (and then m = 3/2, γ = 3/4: α = γ/m², β = (2−γ)/‖Fm−y‖²)
    alpha, beta = fixed_point(np.array([[1.0], [0.0]]), np.array([2.0, 1.0]))
    assert alpha == pytest.approx(1 / 3, rel=1e-6)
    assert beta == pytest.approx(1.0, rel=1e-6)


def test_the_fixed_point_maximises_the_evidence():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(60, 5))
    target = features @ rng.normal(size=5) + 0.5 * rng.normal(size=60)
    alpha, beta = fixed_point(features, target)
    best = log_evidence(features, target, alpha, beta)
    for scale_alpha, scale_beta in [(1.2, 1), (0.8, 1), (1, 1.2), (1, 0.8), (1.1, 0.9)]:
        assert log_evidence(features, target, alpha * scale_alpha, beta * scale_beta) < best


def _three_classes(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = rng.normal(size=(3, 16)) * 2
    separating = centers[labels] + rng.normal(size=(n, 16))
    return separating, labels, rng


def test_logme_does_not_change_when_the_class_names_are_permuted():
    features, labels, _ = _three_classes()
    permuted = np.array([2, 0, 1])[labels]
    assert logme(features, permuted) == pytest.approx(logme(features, labels), rel=1e-12)


def test_features_that_separate_the_classes_score_higher_than_noise():
    features, labels, rng = _three_classes()
    noise = rng.normal(size=features.shape)
    assert logme(features, labels) > logme(noise, labels) + 0.1


def test_features_and_labels_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="4 feature rows but 3 labels"):
        logme(np.ones((4, 2)), np.array([0, 1, 0]))
