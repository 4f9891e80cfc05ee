"""Dice and IoU of segmentation masks: the one definition medlens uses everywhere.

Per image, of boolean masks (anything ``>= 0.5`` after :func:`binarise` counts as inside):

- ``Dice = 2 |P ∩ T| / (|P| + |T|)`` and ``IoU = |P ∩ T| / |P ∪ T|``;
- **empty-mask convention**: an image whose prediction and truth are both empty scores **1**
  (nothing to find, nothing found); an empty truth with a non-empty prediction, or the reverse,
  scores 0. This is MONAI's ``compute_dice`` / ``compute_iou`` with ``ignore_empty=False``.

Scores are per image so a mean over images weights every image alike and so the bootstrap can
resample images (:func:`segmentation_metrics`). NumPy only: any layer may call it on arrays
(a tensor: ``t.detach().cpu().numpy()``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.evaluate.intervals import bootstrap_statistic

__all__ = ["binarise", "dice_iou", "mean_dice_iou", "segmentation_metrics"]


def binarise(masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean masks: booleans as they are, numbers ``>= threshold`` (probabilities, {0, 1})."""
    a = np.asarray(masks)
    return a if a.dtype == np.bool_ else a >= threshold


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU (two float64 arrays of length N) of masks shaped ``N x ...``.

    ``pred`` and ``truth`` are boolean, or numbers binarised at 0.5 (see :func:`binarise`;
    pass ``sigmoid(logits)`` or ``logits >= 0`` for a network's output). Two empty masks
    score 1 (module docstring).
    """
    p = binarise(pred)
    t = binarise(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} masks must have one shape")
    if p.ndim == 0:
        raise ValueError("masks must be N x ... (one mask per image)")
    p = p.reshape(len(p), -1)
    t = t.reshape(len(t), -1)
    inter = (p & t).sum(1).astype(np.float64)
    ps, ts = p.sum(1).astype(np.float64), t.sum(1).astype(np.float64)
    union = ps + ts - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(ps + ts > 0, 2 * inter / np.where(ps + ts > 0, ps + ts, 1.0), 1.0)
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)
    return dice, iou


def mean_dice_iou(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``{"dice": mean, "iou": mean}`` over images (NaN for no images)."""
    dice, iou = dice_iou(pred, truth)
    if not len(dice):
        return {"dice": float("nan"), "iou": float("nan")}
    return {"dice": float(dice.mean()), "iou": float(iou.mean())}


def segmentation_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Mean Dice and IoU over images with seeded percentile-bootstrap intervals over images
    (:func:`medlens.evaluate.intervals.bootstrap_statistic`); ``n`` images."""
    dice, iou = dice_iou(pred, truth)
    return {
        "n": len(dice),
        "empty_masks": "both empty scores 1",
        "dice": bootstrap_statistic([dice], lambda a: float(a.mean()), n_bootstrap, seed, alpha),
        "iou": bootstrap_statistic([iou], lambda a: float(a.mean()), n_bootstrap, seed, alpha),
    }
