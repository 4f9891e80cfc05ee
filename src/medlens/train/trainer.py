"""Fit a classifier (network, multi-task or fusion model) on the train split, choosing the best
checkpoint on validation only.

:func:`fit` builds the Lightning module and data loaders; :mod:`medlens.train.runner` runs the
loop (the same runner trains segmenters). An interrupted run resumes from
``checkpoints/last.ckpt``; a finished one is not trained again. The test split is never touched.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlens.data.manifest import Manifest
from medlens.data.splits import Splits
from medlens.recipes import Recipe
from medlens.train.request import (  # noqa: F401  (re-exported: callers import them from here)
    DONE,
    FitRequest,
    FitResult,
    SplitData,
    StagedFit,
    class_weights,
    head_targets,
    prepare_split_data,
)

log = logging.getLogger(__name__)


def fit_network(req: FitRequest) -> StagedFit:
    """The fitter of networks, multi-task and fusion models: gradient training by Lightning."""
    result = fit(
        req.recipe,
        req.manifest,
        req.splits,
        req.run_dir,
        progress=req.progress,
        fresh=req.fresh,
        data=req.split_data(),
    )
    return StagedFit(result, req.recipe.model_kwargs())


def fit(
    recipe: Recipe,
    manifest: Manifest,
    splits: Splits,
    run_dir: Path,
    progress: bool = True,
    fresh: bool = False,
    prepare: Callable[[Any], None] | None = None,
    data: SplitData | None = None,
) -> FitResult:
    """Train ``recipe.model`` (``prepare`` may set up the built network first, e.g. load a
    trained segmenter into a ``roi_classifier``); ``data`` reuses an earlier preparation."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from medlens.train.dataset import CachedDataset, RecordDataset
    from medlens.train.runner import load_best, quiet_lightning, run_lightning

    quiet_lightning()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = recipe.train
    ckpt_dir = run_dir / "checkpoints"
    done_file = run_dir / DONE
    if fresh:
        for p in [done_file, *ckpt_dir.glob("*.ckpt")]:
            p.unlink(missing_ok=True)

    if data is None:
        data = prepare_split_data(recipe, manifest, splits, run_dir, progress)
    cache, rows, labels, excluded = data.cache, data.rows, data.labels, data.excluded
    train_labels = [labels[i] for i in rows["train"]]
    weights = class_weights(recipe, train_labels)

    augment = recipe_augment(recipe)
    val_labels = [labels[i] for i in rows["val"]]
    if data.targets or data.modal:
        train_ds: Any = RecordDataset(
            cache.array, rows["train"], train_labels, data.targets, data.modal, data.main_modality
        )
        val_ds: Any = RecordDataset(
            cache.array, rows["val"], val_labels, data.targets, data.modal, data.main_modality
        )
    else:
        train_ds = CachedDataset(cache.array, rows["train"], train_labels)
        val_ds = CachedDataset(cache.array, rows["val"], val_labels)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader_kw: dict[str, Any] = {
        "num_workers": cfg.num_workers,
        "persistent_workers": cfg.num_workers > 0,
    }
    train_dl = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(train_ds) > cfg.batch_size,
        generator=gen,
        **loader_kw,
    )
    val_dl = DataLoader(val_ds, batch_size=recipe.evaluate.batch_size, shuffle=False, **loader_kw)

    steps_per_epoch = max(1, len(train_dl) // cfg.devices)
    if cfg.limit_train_batches is not None:
        lim = cfg.limit_train_batches
        steps_per_epoch = min(
            steps_per_epoch, int(lim) if isinstance(lim, int) else math.ceil(lim * steps_per_epoch)
        )
    module = classifier_module(recipe, weights, steps_per_epoch)
    module.augment = augment
    if prepare is not None:
        prepare(module.model)

    if done_file.is_file() and (ckpt_dir / "best.ckpt").is_file():
        info = json.loads(done_file.read_text())
        best_path, best_score, epochs_run = (
            ckpt_dir / "best.ckpt",
            info.get("best_score"),
            info["epochs"],
        )
        resumed = True
    else:
        run = run_lightning(
            module,
            train_dl,
            val_dl,
            run_dir=run_dir,
            ckpt_dir=ckpt_dir,
            log_name="logs",
            monitor=cfg.monitor,
            mode="max" if cfg.monitor == "val_macro_f1" else "min",
            patience=cfg.early_stopping_patience,
            epochs=cfg.epochs,
            progress=progress,
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            precision=cfg.precision,
            grad_clip=cfg.grad_clip,
            limit_train_batches=cfg.limit_train_batches,
        )
        best_path, best_score, epochs_run, resumed = (
            run.best_checkpoint,
            run.best_score,
            run.epochs_run,
            run.resumed,
        )
        done_file.write_text(
            json.dumps(
                {
                    "best_score": best_score,
                    "epochs": epochs_run,
                    "monitor": cfg.monitor,
                    "best_checkpoint": best_path.name,
                }
            )
        )
    model = load_best(module, best_path)
    return FitResult(model, best_path, best_score, epochs_run, resumed, excluded)


def recipe_augment(recipe: Recipe) -> Any:
    """The recipe's train-time augmentation (None when it names none), un-normalising with the
    pipeline's own mean/std so photometric changes act on the image the model was given."""
    from medlens.train.dataset import Augment

    cfg = recipe.train
    if cfg.augment is None:
        return None
    pipeline = recipe.pipeline()
    norm = next((s for s in pipeline.steps if getattr(s, "step", "") == "normalize"), None)
    c = pipeline.output_channels
    mean = list(norm.mean) if norm is not None else [0.0] * c
    std = list(norm.std) if norm is not None else [1.0] * c
    return Augment(cfg.augment, mean, std)


def classifier_module(recipe: Recipe, weights: list[float] | None, steps_per_epoch: int) -> Any:
    """The Lightning module a recipe trains (model, loss, optimiser schedule): one place, so the
    training benchmark's bare loop runs exactly what ``medlens train`` runs."""
    from medlens.train.module import ClassifierModule

    cfg = recipe.train
    return ClassifierModule(
        model_name=recipe.model.name,
        num_classes=len(recipe.task.classes),
        in_chans=recipe.in_chans(),
        model_kwargs=recipe.model_kwargs(),
        pretrained=recipe.model.pretrained,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_epochs=cfg.warmup_epochs,
        loss=cfg.loss,
        class_weights=weights,
        label_smoothing=cfg.label_smoothing,
        focal_gamma=cfg.focal_gamma,
        steps_per_epoch=steps_per_epoch,
        epochs=cfg.epochs,
        heads={h: {"type": c.type, "weight": c.weight} for h, c in recipe.task.heads.items()},
        class_weight=recipe.task.class_weight,
    )
