"""Models trained in stages: a soft-voting ensemble of separately trained members, and a
segmenter whose region of interest a classifier then reads (``roi_classifier``).

Both fit every stage on one preprocessed cache and the same split: an ensemble member is
trained by the fitter of its own kind (:meth:`FitRequest.stage`), exactly like a plain model of
that kind, and the ROI classifier by :func:`~medlens.train.trainer.fit`. Everything chosen after
training (ensemble weights) is chosen on validation only.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from medlens.errors import DataError
from medlens.recipes import ModelConfig, Recipe
from medlens.train.request import FitRequest, FitResult, SplitData, StagedFit

log = logging.getLogger(__name__)


def batched_probabilities(model: Any, array: np.ndarray, rows: list[int], batch: int = 64) -> Any:
    """Softmax of a model's (primary) output on cache rows, in batches, without gradients."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            x = torch.from_numpy(np.asarray(array[rows[start : start + batch]], dtype=np.float32))
            y = model(x)
            if isinstance(y, dict):
                y = y[getattr(model, "primary", "class")]
            out.append(y.float().softmax(1).numpy())
    return np.concatenate(out).astype(np.float64)


def fit_ensemble(req: FitRequest) -> StagedFit:
    """Train each member on the shared split, then weight them (recipe, or fitted on val)."""
    from sklearn.metrics import f1_score

    from medlens.models.ensemble import fit_ensemble_weights, from_members

    recipe, run_dir = req.recipe, req.run_dir
    members = recipe.model.members or []
    data = req.split_data()
    fitted: list[tuple[Any, Recipe, FitResult]] = []
    for m in members:
        cfg = ModelConfig(name=m.name, pretrained=m.pretrained, kwargs=m.kwargs)
        member_recipe = recipe.with_model(cfg, m.train, f"{recipe.name}-{m.key()}")
        log.info("ensemble member %s (%s)", m.key(), m.name)
        res = req.stage(member_recipe, run_dir / "members" / m.key()).result
        fitted.append((m, member_recipe, res))
    val = data.rows["val"]
    y_val = np.array([data.labels[i] for i in val])
    probs = np.stack([batched_probabilities(r.model, data.cache.array, val) for _, _, r in fitted])
    if recipe.model.fit_weights:
        weights = fit_ensemble_weights(probs, y_val)
        source = "fitted on validation (negative log-likelihood)"
    else:
        weights = np.array([m.weight for m in members], dtype=np.float64)
        weights = weights / weights.sum()
        source = "recipe"
    ensemble = from_members(
        [r.model for _, _, r in fitted],
        [m.name for m in members],
        weights,
        labels=[m.key() for m in members],
        member_kwargs=[mr.model_kwargs() for _, mr, _ in fitted],
        num_classes=len(recipe.task.classes),
        in_chans=recipe.in_chans(),
    )
    spec = ensemble.model_spec(len(recipe.task.classes), recipe.in_chans())
    mixed = np.tensordot(np.asarray(ensemble.weights), probs, axes=1)
    info = {
        "weights_from": source,
        "members": {
            m.key(): {
                "model": m.name,
                "weight": float(w),
                "recipe_weight": m.weight,
                "epochs_run": r.epochs_run,
                "val_macro_f1": float(f1_score(y_val, p.argmax(1), average="macro")),
            }
            for (m, _, r), w, p in zip(fitted, ensemble.weights, probs, strict=True)
        },
        "val_macro_f1": float(f1_score(y_val, mixed.argmax(1), average="macro")),
    }
    result = FitResult(
        ensemble.eval(),
        run_dir / "members",
        info["val_macro_f1"],
        max(r.epochs_run for _, _, r in fitted),
        all(r.resumed for _, _, r in fitted),
        data.excluded,
    )
    return StagedFit(result, spec["kwargs"], info)


def region_masks(recipe: Recipe, data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """Each cached image's region mask, carried through the same crop/resize (N x 1 x H x W)."""
    from medlens.data.io import read_mask
    from medlens.errors import MedlensError
    from medlens.preprocess import align_mask

    assert recipe.segmentation is not None
    col = recipe.segmentation.mask_column
    pipeline = recipe.pipeline()
    n, _, h, w = data.cache.array.shape
    masks = np.zeros((n, 1, h, w), dtype=np.float32)
    has = np.zeros(n, dtype=bool)
    for i, s in enumerate(data.samples):
        path = s.get(col)
        if path is None or not data.cache.ok[i]:
            continue
        try:
            info = data.cache.infos[i]
            rows, cols = (int(v) for v in info["original_shape"][:2])
            masks[i, 0] = align_mask(read_mask(path, shape=(rows, cols)), pipeline, info)
            has[i] = True
        except MedlensError as exc:
            log.warning("region mask of %s unusable: %s", s.path, exc)
    return masks, has


def fit_roi(req: FitRequest) -> StagedFit:
    """Train the segmenter on the region masks, then the classifier behind it (frozen)."""
    from medlens.train.segment import fit_segmentation
    from medlens.train.trainer import fit

    recipe, run_dir = req.recipe, req.run_dir
    seg_cfg = recipe.segmentation
    assert seg_cfg is not None
    kwargs = recipe.model_kwargs()
    seg_spec = kwargs["segmenter"]
    data = req.split_data()
    masks, has = region_masks(recipe, data)
    tr = [i for i in data.rows["train"] if has[i]]
    va = [i for i in data.rows["val"] if has[i]]
    if not tr or not va:
        raise DataError(
            f"segmentation.mask_column {seg_cfg.mask_column!r}: no usable masks in the "
            f"{'train' if not tr else 'val'} split"
        )
    arr = data.cache.array
    seg = fit_segmentation(
        np.asarray(arr[tr]),
        masks[tr],
        np.asarray(arr[va]),
        masks[va],
        run_dir,
        model_name=seg_spec["name"],
        model_kwargs=seg_spec.get("kwargs", {}),
        in_chans=recipe.in_chans(),
        epochs=seg_cfg.epochs,
        batch_size=seg_cfg.batch_size,
        lr=seg_cfg.lr,
        seed=recipe.train.seed,
        progress=req.progress,
        patience=seg_cfg.patience,
        fresh=req.fresh,
    )
    state = seg.model.state_dict()

    def load_segmenter(model: Any) -> None:
        model.segmenter.load_state_dict(state, strict=True)

    res = fit(
        recipe,
        req.manifest,
        req.splits,
        run_dir,
        req.progress,
        req.fresh,
        prepare=load_segmenter,
        data=data,
    )
    info = {
        "segmentation": {
            "val_dice": seg.val_dice,
            "val_iou": seg.val_iou,
            "epochs_run": seg.epochs_run,
            "train_masks": len(tr),
            "val_masks": len(va),
            "mask_column": seg_cfg.mask_column,
        }
    }
    return StagedFit(res, kwargs, info)
