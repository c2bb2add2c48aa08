"""Measures of how representations relate: linear CKA between two feature sets, how far a block's
weights moved, and a linear probe on frozen features. Plain math on tensors, plus one helper that
reads a model's pooled features (the input of its head) from a state source."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from sweeper.device import autocast


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Linear centered kernel alignment of two feature sets over the same examples (rows).

    1 for identical features, and unchanged by orthogonal transforms and isotropic scaling of
    either set; near 0 for unrelated ones (Kornblith et al. 2019, "Similarity of Neural Network
    Representations Revisited"). Computed in feature space: ``||Yᵀ X||² / (||Xᵀ X|| ||Yᵀ Y||)``
    on column-centered features, in float64.

    Example:
        >>> x = torch.randn(100, 8)
        >>> round(linear_cka(x, 3 * x), 6)
        1.0
    """
    x, y = _centered(x), _centered(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"feature sets cover {x.shape[0]} and {y.shape[0]} examples; they must match")
    cross = np.linalg.norm(y.T @ x) ** 2
    norms = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norms) if norms > 0 else float("nan")


def _centered(features) -> np.ndarray:
    array = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else features
    array = np.asarray(array, dtype=np.float64).reshape(len(array), -1)
    return array - array.mean(axis=0, keepdims=True)


@torch.no_grad()
def relative_weight_change(current: nn.Module | Sequence[torch.Tensor], reference: nn.Module) -> float:
    """``||w - w0|| / ||w0||`` over all parameters of a module (or its weights, in its parameters'
    order), against its pretrained copy."""
    moved, size = 0.0, 0.0
    weights = current.parameters() if isinstance(current, nn.Module) else current
    pairs = zip(weights, reference.parameters(), strict=True)
    for weight, weight0 in pairs:
        weight0 = weight0.detach().double().cpu()
        moved += float((weight.detach().double().cpu() - weight0).pow(2).sum())
        size += float(weight0.pow(2).sum())
    return (moved / size) ** 0.5 if size > 0 else 0.0


def linear_probe_score(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    val_features: torch.Tensor | np.ndarray,
    val_labels: torch.Tensor | np.ndarray,
) -> float:
    """Balanced accuracy on the validation features of an L2-regularised logistic regression
    trained on standardised training features. Chance is ``1 / classes`` whatever the class sizes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def as_numpy(values):
        return values.detach().cpu().float().numpy() if isinstance(values, torch.Tensor) else values

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    probe.fit(as_numpy(train_features), as_numpy(train_labels))
    predicted = probe.predict(as_numpy(val_features))
    return float(balanced_accuracy_score(as_numpy(val_labels), predicted))


@torch.no_grad()
def pooled_features(model, source, batch_size: int, device: torch.device) -> torch.Tensor:
    """The model's pooled features (what its head reads) for every example of ``source``, in order,
    on the CPU in float32. Every module's train/eval mode is restored afterwards."""
    captured: list[torch.Tensor] = []
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        for state, _ in source.batches(batch_size, device):
            with autocast(device):
                captured.append(model.features_from(state, source.start).float().cpu())
    finally:
        for module, training in modes.items():
            module.training = training
    return torch.cat(captured)
