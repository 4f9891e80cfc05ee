"""Fit a HOG + estimator baseline from the preprocessed image cache.

The cache is the same memory-mapped ``N x C x H x W`` float32 array the networks train from, so the
baseline sees exactly the pixels they see. Rows are read ``chunk`` at a time and turned into HOG
features at once, so only the compact features of the training rows are ever held in memory,
never a copy of the images.

:func:`fit_classical_model` is the fitter of the ``classical`` kind: fitted on train, scored on
validation (macro-F1, the figure networks are checkpointed on), no epochs, no checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from medlens.errors import MedlensError
from medlens.models import create_model, model_info
from medlens.models.classical import ClassicalModel
from medlens.train.request import DONE, FitRequest, FitResult, StagedFit, class_weights


def fit_classical(
    model: ClassicalModel,
    cache_array: np.ndarray,
    train_rows: Sequence[int],
    train_labels: Sequence[int],
    class_weights: Sequence[float] | None = None,
    chunk: int = 256,
) -> ClassicalModel:
    """Fit ``model`` on ``cache_array[train_rows]`` with ``train_labels``; returns the model."""
    if model_info(model).kind != "classical":
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


def fit_classical_model(req: FitRequest) -> StagedFit:
    """HOG + MLP / random forest / XGBoost on the recipe's train split; scored on validation."""
    import torch
    from sklearn.metrics import f1_score

    recipe, data, run_dir = req.recipe, req.split_data(), req.run_dir
    model = create_model(
        recipe.model.name,
        num_classes=len(recipe.task.classes),
        in_chans=recipe.in_chans(),
        pretrained=recipe.model.pretrained,
        **recipe.model_kwargs(),
    )
    train_labels = [data.labels[i] for i in data.rows["train"]]
    fit_classical(
        model,
        data.cache.array,
        data.rows["train"],
        train_labels,
        class_weights(recipe, train_labels),
    )
    val = data.rows["val"]
    with torch.inference_mode():
        pred = model(torch.from_numpy(np.asarray(data.cache.array[val]))).argmax(1).numpy()
    score = float(f1_score([data.labels[i] for i in val], pred, average="macro"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DONE).write_text(json.dumps({"best_score": score, "epochs": 0, "classical": True}))
    result = FitResult(model.eval(), run_dir / DONE, score, 0, False, data.excluded)
    return StagedFit(result, recipe.model_kwargs())
