"""Train the segmenter of a two-stage recipe (Attention U-Net → region of interest → classifier).

The one Lightning runner of classifiers (:mod:`medlens.train.runner`) runs the loop: Dice + BCE
loss, AdamW with cosine decay, the best checkpoint chosen on validation Dice only, early stopping,
a seeded, deterministic run, and a done marker so a finished fit is reloaded rather than trained
again (an interrupted one resumes from ``checkpoints_seg/last.ckpt``).

Inputs are arrays already preprocessed the way inference preprocesses them (``N x C x H x W``
float32, possibly memory-mapped: rows are copied one at a time) and masks ``N x 1 x H x W`` in
{0, 1}. The only train-time change is a left-right flip applied identically to image and mask:
the pelvis is close to left-right symmetric, so a flipped joint is still a plausible joint
(an upside-down pelvis is not, so there is no vertical flip).

Per-image Dice / IoU of a fitted segmenter (:func:`model_dice_iou`, via
:func:`medlens.train.losses.per_image_dice_iou`) are returned as arrays so bootstrap intervals can
be computed later; an image whose mask and prediction are both empty scores 1, as in
``medlens.evaluate.segmentation`` (held-out figures, on numpy masks).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.models import create_model
from medlens.train.losses import DiceBCELoss, per_image_dice_iou  # MONAI: imported when used
from medlens.train.module import warmup_cosine
from medlens.train.runner import load_best, run_lightning

log = logging.getLogger(__name__)
DONE = "segmentation_done.json"
CKPT_DIR = "checkpoints_seg"

__all__ = [
    "SegmentationModule",
    "SegmentationResult",
    "fit_segmentation",
    "model_dice_iou",
    "per_image_dice_iou",
]


@dataclass
class SegmentationResult:
    """The fitted segmenter (eval mode, best validation weights) and how it got there.

    ``spec`` is ``{"name": ..., "kwargs": {...}}``: pass it as ``segmenter=`` to the
    ``roi_classifier`` builder so the wrapper's segmenter has the same architecture, then
    ``load_segmenter(result.model)``. ``val_dice`` / ``val_iou``: mean per-image scores of the
    best checkpoint on the validation arrays. ``resumed``: reloaded from a finished run.
    """

    model: Any  # torch.nn.Module
    best_checkpoint: Path
    val_dice: float
    val_iou: float
    epochs_run: int
    resumed: bool
    spec: dict[str, Any] = field(default_factory=dict)


class SegmentationModule(L.LightningModule):
    """A registry segmenter with one output channel, Dice + BCE, AdamW + cosine decay.

    Validation logs ``val_dice`` / ``val_iou`` as means over images (batch means weighted by
    batch size), which is what the checkpoint and early stopping watch.
    """

    def __init__(
        self,
        model_name: str,
        in_chans: int,
        model_kwargs: dict[str, Any],
        lr: float,
        weight_decay: float,
        steps_per_epoch: int,
        epochs: int,
        hflip: float = 0.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(
            model_name, num_classes=1, in_chans=in_chans, pretrained=False, **model_kwargs
        )
        self.criterion = DiceBCELoss()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer.training and self.hparams.hflip > 0:
            x, m = batch
            flip = torch.rand(x.shape[0], device=x.device) < self.hparams.hflip
            flip = flip.view(-1, 1, 1, 1)
            return torch.where(flip, x.flip(-1), x), torch.where(flip, m.flip(-1), m)
        return batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, m = batch
        loss = self.criterion(self(x), m)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, m = batch
        logits = self(x)
        dice, iou = per_image_dice_iou(logits, m)
        n = int(x.shape[0])
        self.log("val_loss", self.criterion(logits, m), on_epoch=True, batch_size=n)
        self.log("val_dice", dice.mean(), prog_bar=True, on_epoch=True, batch_size=n)
        self.log("val_iou", iou.mean(), on_epoch=True, batch_size=n)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, hp.steps_per_epoch * hp.epochs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 0, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _PairDataset:
    """Rows of (image, mask) arrays, copied one at a time (works on memory maps)."""

    def __init__(self, x: np.ndarray, m: np.ndarray) -> None:
        self.x, self.m = x, m

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        xi = np.array(self.x[i], dtype=np.float32, copy=True)
        mi = (np.asarray(self.m[i]) > 0.5).astype(np.float32)
        return torch.from_numpy(xi), torch.from_numpy(mi)


def _check_pair(x: np.ndarray, m: np.ndarray, split: str) -> np.ndarray:
    if x.ndim != 4:
        raise MedlensError(f"{split} images must be N x C x H x W, got shape {x.shape}")
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[0] != x.shape[0] or m.shape[2:] != x.shape[2:]:
        raise MedlensError(
            f"{split} masks must be N x 1 x H x W matching the images {x.shape}, got {m.shape}"
        )
    if len(x) == 0:
        raise MedlensError(f"the {split} split has no images")
    return m


def fit_segmentation(
    train_x: np.ndarray,
    train_m: np.ndarray,
    val_x: np.ndarray,
    val_m: np.ndarray,
    run_dir: str | Path,
    *,
    model_name: str = "attention_unet",
    model_kwargs: dict[str, Any] | None = None,
    in_chans: int = 1,
    epochs: int = 20,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
    patience: int | None = 5,
    weight_decay: float = 1e-4,
    hflip: float = 0.5,
    accelerator: str = "auto",
    num_workers: int = 0,
    fresh: bool = False,
) -> SegmentationResult:
    """Fit a binary segmenter; the best checkpoint is chosen on validation Dice only.

    Writes ``checkpoints_seg/{best,last}.ckpt``, CSV logs under ``logs_seg/`` and, when done,
    ``segmentation_done.json`` in ``run_dir``. A second call with the same run folder and the
    same model/data shapes reloads the best checkpoint instead of training (a different spec
    is refused rather than silently mixed; ``fresh=True`` discards the earlier fit).
    ``patience``: epochs without a better val Dice before stopping (None/0: never stop early).
    """
    from torch.utils.data import DataLoader

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_m = _check_pair(train_x, train_m, "train")
    val_m = _check_pair(val_x, val_m, "val")
    if train_x.shape[1] != in_chans or val_x.shape[1:] != train_x.shape[1:]:
        raise MedlensError(
            f"images must all be {in_chans} x H x W like each other: train {train_x.shape}, "
            f"val {val_x.shape}"
        )
    kwargs = dict(model_kwargs or {})
    spec = {"name": model_name, "kwargs": kwargs}
    fingerprint = {
        "model": spec,
        "in_chans": in_chans,
        "image_shape": [int(v) for v in train_x.shape[1:]],
        "n_train": len(train_x),
        "n_val": len(val_x),
        "seed": seed,
    }
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as read back from disk
    ckpt_dir = run_dir / CKPT_DIR
    done_file = run_dir / DONE
    best = ckpt_dir / "best.ckpt"
    if fresh:
        for p in [done_file, *ckpt_dir.glob("*.ckpt")]:
            p.unlink(missing_ok=True)

    L.seed_everything(seed, workers=True, verbose=False)
    gen = torch.Generator().manual_seed(seed)
    train_ds = _PairDataset(train_x, train_m)
    loader_kw: dict[str, Any] = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    train_dl = DataLoader(
        train_ds,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(train_ds) > batch_size,
        generator=gen,
        **loader_kw,
    )
    val_dl = DataLoader(
        _PairDataset(val_x, val_m),  # type: ignore[arg-type]
        batch_size=batch_size * 2,
        shuffle=False,
        **loader_kw,
    )
    module = SegmentationModule(
        model_name=model_name,
        in_chans=in_chans,
        model_kwargs=kwargs,
        lr=lr,
        weight_decay=weight_decay,
        steps_per_epoch=max(1, len(train_dl)),
        epochs=epochs,
        hflip=hflip,
    )

    if done_file.is_file() and best.is_file():
        info = json.loads(done_file.read_text())
        if info.get("fingerprint") != fingerprint:
            raise MedlensError(
                f"{run_dir} holds a segmentation fit of a different model or data "
                f"({info.get('fingerprint')}); use another run folder or fresh=True"
            )
        model = load_best(module, best)
        log.info("reloaded the finished segmentation fit in %s", run_dir)
        return SegmentationResult(
            model, best, info["val_dice"], info["val_iou"], int(info["epochs"]), True, spec
        )

    run = run_lightning(
        module,
        train_dl,
        val_dl,
        run_dir=run_dir,
        ckpt_dir=ckpt_dir,
        log_name="logs_seg",
        monitor="val_dice",
        mode="max",
        patience=patience,
        epochs=epochs,
        progress=progress,
        accelerator=accelerator,
    )
    best_path, epochs_run = run.best_checkpoint, run.epochs_run
    model = load_best(module, best_path)
    scores = model_dice_iou(model, val_x, val_m, batch_size=batch_size * 2)
    if best_path != best:  # no validation score was ever logged: keep the last weights as best
        shutil.copyfile(best_path, best)
    done_file.write_text(
        json.dumps(
            {
                "val_dice": scores["dice_mean"],
                "val_iou": scores["iou_mean"],
                "epochs": epochs_run,
                "monitor": "val_dice",
                "best_checkpoint": best.name,
                "fingerprint": fingerprint,
            },
            indent=2,
        )
    )
    return SegmentationResult(
        model, best, scores["dice_mean"], scores["iou_mean"], epochs_run, False, spec
    )


def model_dice_iou(
    model: Any, x: np.ndarray, m: np.ndarray, batch_size: int = 32, threshold: float = 0.5
) -> dict[str, Any]:
    """Per-image Dice and IoU of ``model`` (B x 1 x H x W logits) on arrays, and their means.

    Returns ``{"dice": array, "iou": array, "dice_mean": float, "iou_mean": float, "n": int}``;
    the arrays (float64, one entry per image, in order) are for bootstrap intervals. The
    model's train/eval flag is restored afterwards.
    """
    masks = _check_pair(x, m, "eval")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    dice_parts: list[np.ndarray] = []
    iou_parts: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                stop = start + batch_size
                xb = torch.as_tensor(np.array(x[start:stop], dtype=np.float32), device=device)
                mb = torch.as_tensor(np.asarray(masks[start:stop]) > 0.5, device=device)
                dice, iou = per_image_dice_iou(model(xb), mb, threshold)
                dice_parts.append(dice.double().cpu().numpy())
                iou_parts.append(iou.double().cpu().numpy())
    finally:
        model.train(was_training)
    dice_all = np.concatenate(dice_parts)
    iou_all = np.concatenate(iou_parts)
    return {
        "dice": dice_all,
        "iou": iou_all,
        "dice_mean": float(dice_all.mean()),
        "iou_mean": float(iou_all.mean()),
        "n": len(dice_all),
    }
