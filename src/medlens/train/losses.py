"""Training losses: class-weighted cross-entropy, softmax focal loss, and Dice + BCE for masks.

torch ships cross-entropy with weights and label smoothing; it has no multi-class *softmax* focal
loss (torchvision's is the binary sigmoid form), so that one is written here in a few lines.
The segmenter's Dice + BCE and the per-image Dice/IoU that picks its best checkpoint use MONAI,
imported only when a segmenter trains. (Held-out Dice/IoU on numpy masks, with intervals, is
the evaluation layer's; training never imports it.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def _monai(module: str) -> Any:
    from medlens.errors import require

    return require(module, "monai")


class DiceBCELoss(nn.Module):
    """Dice + binary cross-entropy for binary masks (MONAI's DiceCELoss covers multi-class)."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        self.dice = _monai("monai.losses").DiceLoss(sigmoid=True)
        self.bce = nn.BCEWithLogitsLoss()
        self.wd, self.wb = dice_weight, bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.wd * self.dice(logits, target) + self.wb * self.bce(logits, target.float())


def per_image_dice_iou(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU (``B`` tensors) of thresholded sigmoid masks, via MONAI.

    An image whose mask and prediction are both empty scores 1. Kept per image so that epoch
    means are weighted by image and so the validation figures of a fit can be bootstrapped.
    """
    metrics = _monai("monai.metrics")
    pred = (torch.sigmoid(logits.float()) >= threshold).float()
    t = (target.float() > 0.5).float()
    dice = metrics.compute_dice(pred, t, include_background=True, ignore_empty=False)
    iou = metrics.compute_iou(pred, t, include_background=True, ignore_empty=False)
    return dice.mean(dim=1), iou.mean(dim=1)  # one output channel: mean over C is that channel
