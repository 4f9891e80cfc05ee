"""Classification losses: class-weighted cross-entropy and softmax focal loss.

torch ships cross-entropy with weights and label smoothing; it has no multi-class *softmax* focal
loss (torchvision's is the binary sigmoid form), so that one is written here in a few lines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """``n / (k * count_c)`` as in scikit-learn's 'balanced'; absent classes get weight 1."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(float)
    n = counts.sum()
    return [float(n / (num_classes * c)) if c > 0 else 1.0 for c in counts]


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): down-weights easy examples by ``(1 - p_t)^gamma``."""

    def __init__(
        self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(
            logits,
            target,
            weight=self.weight,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        p_t = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        loss = (1.0 - p_t).pow(self.gamma) * ce
        if self.weight is not None:
            return loss.sum() / self.weight[target].sum()
        return loss.mean()


def build_loss(
    kind: str, weights: Sequence[float] | None, label_smoothing: float, focal_gamma: float
) -> nn.Module:
    w = torch.tensor(list(weights), dtype=torch.float32) if weights is not None else None
    if kind == "focal":
        return FocalLoss(focal_gamma, w, label_smoothing)
    return nn.CrossEntropyLoss(weight=w, label_smoothing=label_smoothing)
