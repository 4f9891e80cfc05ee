"""The Lightning module: a registry model, a loss, AdamW with warm-up + cosine decay.

Validation macro-F1 comes from torchmetrics, which synchronises across DDP processes, so the best
checkpoint is chosen on the whole validation split whatever the number of devices.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassF1Score

from medlens.models import create_model
from medlens.train.losses import build_loss


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, floor: float = 0.01) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``floor``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        model_name: str,
        num_classes: int,
        in_chans: int,
        model_kwargs: dict[str, Any],
        pretrained: bool | str,
        lr: float,
        weight_decay: float,
        warmup_epochs: float,
        loss: str,
        class_weights: list[float] | None,
        label_smoothing: float,
        focal_gamma: float,
        steps_per_epoch: int,
        epochs: int,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(
            model_name,
            num_classes=num_classes,
            in_chans=in_chans,
            pretrained=pretrained,
            **model_kwargs,
        )
        self.criterion = build_loss(loss, class_weights, label_smoothing, focal_gamma)
        self.val_f1 = MulticlassF1Score(num_classes=num_classes, average="macro")
        self.augment: Any = None  # set by the trainer; applied to training batches only

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer.training and self.augment is not None:
            x, y = batch
            return self.augment(x), y
        return batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        logits = self(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.val_f1.update(logits.argmax(1), y)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True)
        self.log("val_macro_f1", self.val_f1, prog_bar=True, on_epoch=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, hp.steps_per_epoch * hp.epochs)
        warm = round(hp.warmup_epochs * hp.steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warm, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
