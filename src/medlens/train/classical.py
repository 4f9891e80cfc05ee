"""Fit a HOG + estimator baseline from the preprocessed image cache.

The cache is the same memory-mapped ``N x C x H x W`` float32 array the networks train from, so the
baseline sees exactly the pixels they see. Rows are read ``chunk`` at a time and turned into HOG
features at once, so only the compact features of the training rows are ever held in memory,
never a copy of the images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medlens.errors import MedlensError
from medlens.models.classical import ClassicalModel, is_classical


def fit_classical(
    model: ClassicalModel,
    cache_array: np.ndarray,
    train_rows: Sequence[int],
    train_labels: Sequence[int],
    class_weights: Sequence[float] | None = None,
    chunk: int = 256,
) -> ClassicalModel:
    """Fit ``model`` on ``cache_array[train_rows]`` with ``train_labels``; returns the model."""
    if not is_classical(model):
        raise MedlensError(f"fit_classical needs a hog_* model, got {type(model).__name__}")
    if len(train_rows) != len(train_labels):
        raise MedlensError(
            f"{len(train_rows)} training rows but {len(train_labels)} labels; they must match"
        )
    idx = np.asarray(train_rows, dtype=np.int64)
    parts = []
    for start in range(0, len(idx), chunk):
        part = idx[start : start + chunk]
        order = np.argsort(part, kind="stable")  # ascending reads are sequential on disk
        images = np.empty((len(part), *cache_array.shape[1:]), dtype=np.float32)
        images[order] = cache_array[part[order]]
        parts.append(model.features(images))
    feats = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return model.fit_features(feats, np.asarray(train_labels, dtype=np.int64), class_weights)
