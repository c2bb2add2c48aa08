"""LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning"): how well frozen features suit a task, as the log evidence of a Bayesian linear model on
them, maximised over its two precisions. Plain numpy, no training and no hyperparameters.

For features ``F`` (n × D) and one target column ``y`` (the one-hot column of a class), the model is
``y = F w + ε`` with ``w ~ N(0, I/α)`` and ``ε ~ N(0, I/β)``, so ``y ~ N(0, F Fᵀ/α + I/β)``. Its log
evidence, with ``A = α I + β FᵀF`` and ``m = β A⁻¹ Fᵀ y``, is (the paper's equation 2)::

    L(α, β) = n/2 log β + D/2 log α − n/2 log 2π − β/2 ‖F m − y‖² − α/2 ‖m‖² − 1/2 log |A|

α and β are set by MacKay's fixed point (the paper's Algorithm 1): with ``γ = Σ β σᵢ / (α + β σᵢ)``
over the eigenvalues σ of FᵀF, repeat ``α ← γ / ‖m‖²``, ``β ← (n − γ) / ‖F m − y‖²``. One thin SVD
``F = U S Vᵀ`` serves every class and every iteration: with ``z = Uᵀ y`` all the terms above are sums
over the singular values. LogME is the mean over classes of ``L / n`` at the fixed point; higher is
better, and it is comparable across models on the same examples and labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TINY = 1e-12


@dataclass(frozen=True)
class _Spectrum:
    """The thin SVD of the features, as LogME needs it: σ = S² and the projections of targets."""

    singular: np.ndarray  # S, the nonzero-rank singular values (length r ≤ min(n, D))
    u: np.ndarray  # n × r
    n: int
    d: int

    @classmethod
    def of(cls, features: np.ndarray) -> _Spectrum:
        features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        u, singular, _ = np.linalg.svd(features, full_matrices=False)
        return cls(singular, u, features.shape[0], features.shape[1])

    @property
    def sigma(self) -> np.ndarray:
        return self.singular**2


@dataclass(frozen=True)
class _Terms:
    gamma: float  # effective number of well-determined weights
    weight_norm: float  # ‖m‖²
    residual: float  # ‖F m − y‖²
    log_det: float  # log |A|


def _terms(spectrum: _Spectrum, z: np.ndarray, rest: float, alpha: float, beta: float) -> _Terms:
    # z = Uᵀ y, rest = ‖y‖² − ‖z‖² (the part of y outside F's column space)
    sigma = spectrum.sigma
    denominator = alpha + beta * sigma
    weight_norm = float(np.sum((beta * spectrum.singular * z / denominator) ** 2))
    residual = float(np.sum((alpha * z / denominator) ** 2) + rest)
    gamma = float(np.sum(beta * sigma / denominator))
    # FᵀF has D − r zero eigenvalues: each adds log α to log |A|
    log_det = float(np.sum(np.log(denominator)) + (spectrum.d - len(sigma)) * np.log(alpha))
    return _Terms(gamma, weight_norm, residual, log_det)


def _evidence(spectrum: _Spectrum, terms: _Terms, alpha: float, beta: float) -> float:
    n, d = spectrum.n, spectrum.d
    return (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * terms.residual
        - alpha / 2 * terms.weight_norm
        - terms.log_det / 2
    )


def _projected(spectrum: _Spectrum, target: np.ndarray) -> tuple[np.ndarray, float]:
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    z = spectrum.u.T @ target
    return z, max(float(target @ target - z @ z), 0.0)


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """``log p(y | F, α, β)`` of the Bayesian linear model, for given precisions (not divided by n)."""
    spectrum = _Spectrum.of(features)
    z, rest = _projected(spectrum, target)
    return float(_evidence(spectrum, _terms(spectrum, z, rest, alpha, beta), alpha, beta))


def fixed_point(
    features: np.ndarray, target: np.ndarray, *, tolerance: float = 1e-8, max_steps: int = 200
) -> tuple[float, float]:
    """The (α, β) that MacKay's fixed-point iteration reaches from α = β = 1."""
    spectrum = _Spectrum.of(features)
    z, rest = _projected(spectrum, target)
    return _iterate(spectrum, z, rest, tolerance, max_steps)


def _iterate(
    spectrum: _Spectrum, z: np.ndarray, rest: float, tolerance: float, max_steps: int
) -> tuple[float, float]:
    alpha, beta = 1.0, 1.0
    for _ in range(max_steps):
        terms = _terms(spectrum, z, rest, alpha, beta)
        new_alpha = terms.gamma / (terms.weight_norm + _TINY)
        new_beta = (spectrum.n - terms.gamma) / (terms.residual + _TINY)
        new_alpha, new_beta = max(new_alpha, _TINY), max(new_beta, _TINY)
        converged = abs(new_alpha / new_beta - alpha / beta) <= tolerance * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    return alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of features (n × D) for integer class labels (n): the mean over classes of the
    maximised log evidence per example of that class's one-hot column. Higher is better.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = rng.integers(0, 2, 200)
        >>> separating = np.c_[labels + 0.1 * rng.normal(size=200), rng.normal(size=200)]
        >>> logme(separating, labels) > logme(rng.normal(size=(200, 2)), labels)
        True
    """
    labels = np.asarray(labels).reshape(-1)
    spectrum = _Spectrum.of(features)
    if spectrum.n != len(labels):
        raise ValueError(f"{spectrum.n} feature rows but {len(labels)} labels; they must match")
    scores = []
    for cls in np.unique(labels):
        z, rest = _projected(spectrum, (labels == cls).astype(np.float64))
        alpha, beta = _iterate(spectrum, z, rest, tolerance=1e-8, max_steps=200)
        terms = _terms(spectrum, z, rest, alpha, beta)
        scores.append(_evidence(spectrum, terms, alpha, beta) / spectrum.n)
    return float(np.mean(scores))
