"""Fit a recipe's model on the train split, choosing the best checkpoint on validation only.

Lightning does the loop, checkpointing, early stopping, gradient clipping, progress bar and
distribution (``train.devices > 1`` runs DDP, on CPUs with gloo), so none of that is home-made.
An interrupted run resumes from ``checkpoints/last.ckpt``; a finished one is not trained again.
The test split is never touched here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.manifest import Manifest, Sample
from medlens.data.splits import Splits
from medlens.errors import DataError
from medlens.recipes import Recipe
from medlens.train.cache import ImageCache, build_cache
from medlens.train.losses import balanced_class_weights

log = logging.getLogger(__name__)
DONE = "training_done.json"


@dataclass
class FitResult:
    model: Any  # torch.nn.Module in eval mode, best validation weights
    best_checkpoint: Path
    best_score: float | None
    epochs_run: int
    resumed: bool
    excluded: dict[str, str]  # unreadable files: path -> reason


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", ".*isinstance.*treespec.*")


@dataclass
class SplitData:
    """Train+val images preprocessed once, with everything a recipe's model learns from."""

    samples: list[Sample]  # train then val, in cache order
    cache: ImageCache
    rows: dict[str, list[int]]  # readable cache rows of each split
    labels: list[int]  # class index per cache row
    excluded: dict[str, str]  # unreadable files: path -> reason
    targets: dict[str, np.ndarray]  # head -> value per cache row (-1 / NaN unknown)
    modal: dict[str, tuple[np.ndarray, np.ndarray]]  # extra modality -> (array, readable)
    main_modality: str | None = None


def head_targets(recipe: Recipe, samples: list[Sample]) -> dict[str, np.ndarray]:
    """Each extra head's targets read from its manifest column; bad values name file + column."""
    out: dict[str, np.ndarray] = {}
    for name, head in recipe.task.heads.items():
        reg = head.type == "regression"
        values = np.full(len(samples), np.nan if reg else -1, dtype=np.float32 if reg else np.int64)
        for i, s in enumerate(samples):
            raw = s.get(head.column)
            if raw is None:
                continue
            try:
                v = float(raw)
            except ValueError:
                raise DataError(
                    f"{s.path}: column {head.column!r} (head {name!r}) holds {raw!r}, not a number"
                ) from None
            if not reg and (v != int(v) or not 0 <= v < (head.num_classes or 0)):
                raise DataError(
                    f"{s.path}: column {head.column!r} (head {name!r}) holds {raw!r}; expected an "
                    f"integer 0..{(head.num_classes or 0) - 1}"
                )
            values[i] = v
        out[name] = values
    return out


def prepare_split_data(
    recipe: Recipe, manifest: Manifest, splits: Splits, run_dir: Path, progress: bool
) -> SplitData:
    """Cache train+val images (and other modalities), read extra targets, index the splits."""
    samples: list[Sample] = splits.samples(manifest, "train") + splits.samples(manifest, "val")
    pipeline = recipe.pipeline()
    cache = build_cache(samples, pipeline, run_dir / "cache", progress)
    cls_index = {c: i for i, c in enumerate(recipe.task.classes)}
    labels = [cls_index[s.label] for s in samples]  # type: ignore[index]
    n_train = len(splits.samples(manifest, "train"))
    excluded = {samples[i].path: msg for i, msg in cache.errors.items()}
    rows = {
        "train": [i for i in range(n_train) if cache.ok[i]],
        "val": [i for i in range(n_train, len(samples)) if cache.ok[i]],
    }
    for k, v in rows.items():
        if not v:
            raise DataError(f"no readable images in the {k} split ({len(excluded)} unreadable)")
    modal: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    main = None
    if recipe.data.modalities:
        main, *others = recipe.data.modalities
        for m in others:
            col = recipe.data.modalities[m]
            alt = [Sample(s.get(col) or "", s.label) for s in samples]
            c = build_cache(alt, pipeline, run_dir / "cache", progress)
            modal[m] = (c.array, c.ok)
            log.info("%s: %d of %d images readable", m, int(c.ok.sum()), len(alt))
    return SplitData(
        samples, cache, rows, labels, excluded, head_targets(recipe, samples), modal, main
    )


def _class_weights(recipe: Recipe, train_labels: list[int]) -> list[float] | None:
    k = len(recipe.task.classes)
    cw = recipe.train.class_weights
    if cw == "balanced":
        return balanced_class_weights(train_labels, k)
    if cw == "none":
        return None
    if len(cw) != k:
        raise DataError(f"train.class_weights needs {k} numbers, one per class")
    return list(cw)


def _fit_classical(recipe: Recipe, data: SplitData, run_dir: Path) -> FitResult:
    """HOG + MLP / random forest / XGBoost: fitted on train, scored on validation."""
    from sklearn.metrics import f1_score

    from medlens.models import create_model
    from medlens.train.classical import fit_classical

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
        _class_weights(recipe, train_labels),
    )
    import torch

    val = data.rows["val"]
    with torch.inference_mode():
        pred = model(torch.from_numpy(np.asarray(data.cache.array[val]))).argmax(1).numpy()
    score = float(f1_score([data.labels[i] for i in val], pred, average="macro"))
    (run_dir / DONE).write_text(json.dumps({"best_score": score, "epochs": 0, "classical": True}))
    return FitResult(model.eval(), run_dir / DONE, score, 0, False, data.excluded)


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
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from medlens.train.dataset import Augment, CachedDataset, RecordDataset
    from medlens.train.module import ClassifierModule

    _quiet_lightning()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = recipe.train
    ckpt_dir = run_dir / "checkpoints"
    done_file = run_dir / DONE
    if fresh:
        for p in [done_file, *ckpt_dir.glob("*.ckpt")]:
            p.unlink(missing_ok=True)

    if data is None:
        data = prepare_split_data(recipe, manifest, splits, run_dir, progress)
    for path, reason in data.excluded.items():
        log.warning("excluded unreadable image %s: %s", path, reason)
    from medlens.models.classical import CLASSICAL_MODELS

    if recipe.model.name in CLASSICAL_MODELS:
        return _fit_classical(recipe, data, run_dir)
    cache, rows, labels, excluded = data.cache, data.rows, data.labels, data.excluded
    k = len(recipe.task.classes)
    train_labels = [labels[i] for i in rows["train"]]
    weights = _class_weights(recipe, train_labels)

    pipeline = recipe.pipeline()
    norm = next((s for s in pipeline.steps if getattr(s, "step", "") == "normalize"), None)
    c = pipeline.output_channels
    mean = list(norm.mean) if norm is not None else [0.0] * c
    std = list(norm.std) if norm is not None else [1.0] * c
    augment = Augment(cfg.augment, mean, std) if cfg.augment is not None else None
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
    module = ClassifierModule(
        model_name=recipe.model.name,
        num_classes=k,
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
    module.augment = augment
    if prepare is not None:
        prepare(module.model)

    mode = "max" if cfg.monitor == "val_macro_f1" else "min"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=cfg.monitor,
        mode=mode,
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks: list[Any] = [checkpoint]
    if cfg.early_stopping_patience:
        callbacks.append(
            EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.early_stopping_patience)
        )
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=False))
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy="ddp" if cfg.devices > 1 else "auto",
        precision=cfg.precision,
        gradient_clip_val=cfg.grad_clip,
        callbacks=callbacks,
        logger=CSVLogger(str(run_dir), name="logs"),  # a new version folder per (resumed) fit
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic="warn",
        limit_train_batches=cfg.limit_train_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    last = ckpt_dir / "last.ckpt"
    resumed = False
    if done_file.is_file() and (ckpt_dir / "best.ckpt").is_file():
        info = json.loads(done_file.read_text())
        best_path, best_score, epochs_run = (
            ckpt_dir / "best.ckpt",
            info.get("best_score"),
            info["epochs"],
        )
        resumed = True
    else:
        ckpt_path = str(last) if last.is_file() else None
        resumed = ckpt_path is not None
        trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)
        if not trainer.is_global_zero:
            raise SystemExit(0)  # DDP workers stop here; rank 0 bundles and evaluates
        best_path = Path(checkpoint.best_model_path or last)
        score = checkpoint.best_model_score
        best_score = float(score) if score is not None else None
        epochs_run = int(trainer.current_epoch)
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
    model = _load_best(module, best_path)
    return FitResult(model, best_path, best_score, epochs_run, resumed, excluded)


def _load_best(module: Any, path: Path) -> Any:
    import torch

    # Our own checkpoint, written by this run; tensors and plain containers only.
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    return module.model.eval()


def class_index(recipe: Recipe, samples: list[Sample]) -> np.ndarray:
    idx = {c: i for i, c in enumerate(recipe.task.classes)}
    return np.array([idx[s.label] for s in samples], dtype=int)  # type: ignore[index]
