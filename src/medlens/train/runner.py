"""The one Lightning runner every network fit goes through (classifiers and segmenters alike).

Lightning does the loop, checkpointing, early stopping, gradient clipping, progress bar and
distribution, so none of that is home-made; this module sets it up once. Each fit keeps
``best.ckpt`` (the monitored validation score) and ``last.ckpt`` in its checkpoint folder, and
an interrupted fit resumes from ``last.ckpt``. What "finished" means (the done marker and what
it records) stays with the caller, which knows its own fingerprint.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunOutcome:
    best_checkpoint: Path
    best_score: float | None
    epochs_run: int
    resumed: bool  # continued from an interrupted fit's last.ckpt


def quiet_lightning() -> None:
    """Keep Lightning's INFO lines and its warnings about our deliberate choices off screen."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", ".*isinstance.*treespec.*")


def progress_bar() -> Any:
    """Lightning's rich progress bar without ``v_num``: the logger's version folder number
    means nothing to the person watching a fit."""
    from lightning.pytorch.callbacks import RichProgressBar

    class _Bar(RichProgressBar):
        def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
            items = dict(super().get_metrics(trainer, pl_module))
            items.pop("v_num", None)
            return items

    return _Bar(leave=False)


def run_lightning(
    module: Any,
    train_dl: Any,
    val_dl: Any,
    *,
    run_dir: Path,
    ckpt_dir: Path,
    log_name: str,
    monitor: str,
    mode: str,
    patience: int | None,
    epochs: int,
    progress: bool,
    accelerator: str = "auto",
    devices: int = 1,
    precision: str = "32-true",
    grad_clip: float | None = None,
    limit_train_batches: int | float | None = None,
) -> RunOutcome:
    """Fit ``module``, keeping the best checkpoint on ``monitor``; resume from ``last.ckpt``.

    ``devices > 1`` runs DDP; the worker processes exit here and only rank 0 returns. Runs are
    seeded by the caller (before the module is built) and deterministic where the kernels allow.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    quiet_lightning()
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning 2.x writes ``save_last``'s copy only when a best file was written, so after an
    # epoch that did not improve, last.ckpt would still hold the best epoch and a resumed fit
    # would replay epochs from there. The latest state has its own checkpoint, every epoch.
    latest = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
    )
    callbacks: list[Any] = [checkpoint, latest]
    if patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience))
    if progress:
        callbacks.append(progress_bar())
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        precision=precision,
        gradient_clip_val=grad_clip,
        callbacks=callbacks,
        logger=CSVLogger(str(run_dir), name=log_name),  # a new version folder per (resumed) fit
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic="warn",  # some GPU kernels (transposed conv backward) have no exact mode
        limit_train_batches=limit_train_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if last.is_file() else None
    trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)
    if not trainer.is_global_zero:
        raise SystemExit(0)  # DDP workers stop here; rank 0 bundles and evaluates
    score = checkpoint.best_model_score
    return RunOutcome(
        Path(checkpoint.best_model_path or last),
        float(score) if score is not None else None,
        int(trainer.current_epoch),
        ckpt_path is not None,
    )


def load_best(module: Any, path: Path) -> Any:
    """The module's network with the weights of checkpoint ``path``, in eval mode."""
    import torch

    # Our own checkpoint, written by this run; tensors and plain containers only.
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    return module.model.eval()
