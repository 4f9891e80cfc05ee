"""The Lightning module: a registry model, a loss, AdamW with warm-up + cosine decay.

Validation macro-F1 comes from torchmetrics, which synchronises across DDP processes, so the best
checkpoint is chosen on the whole validation split whatever the number of devices.

Batches are ``(x, y)`` for a plain classifier, or a dict for everything else: ``x`` a tensor or
``{modality: tensor}`` (fusion, with ``present`` masks), ``y`` the class, and ``t_<head>`` the
extra targets of a multi-task model (``-1`` / NaN where unknown, which adds nothing to the loss).
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
        heads: dict[str, dict[str, Any]] | None = None,
        class_weight: float = 1.0,
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
        if not (self.trainer.training and self.augment is not None):
            return batch
        if isinstance(batch, dict):
            x = batch["x"]
            aug = (
                {m: self.augment(v) for m, v in x.items()}
                if isinstance(x, dict)
                else self.augment(x)
            )
            return {**batch, "x": aug}
        x, y = batch
        return self.augment(x), y

    def forward(self, x: Any, present: Any = None) -> Any:
        return self.model(x, present) if isinstance(x, dict) else self.model(x)

    def _outputs(self, batch: Any) -> tuple[Any, torch.Tensor]:
        if isinstance(batch, dict):
            return self(batch["x"], batch.get("present")), batch["y"]
        x, y = batch
        return self(x), y

    def _primary(self, out: Any) -> torch.Tensor:
        if isinstance(out, dict):
            return out[getattr(self.model, "primary", "class")]
        return out

    def _head_losses(self, out: Any, batch: Any) -> dict[str, torch.Tensor]:
        """Loss of each extra head over the samples whose target is known."""
        import torch.nn.functional as F

        losses: dict[str, torch.Tensor] = {}
        if not isinstance(out, dict) or not isinstance(batch, dict):
            return losses
        for name, spec in (self.hparams.heads or {}).items():
            target = batch[f"t_{name}"]
            pred = out[name]
            if spec["type"] == "regression":
                known = ~torch.isnan(target)
                diff = pred[known] - target[known].to(pred.dtype)
            else:
                known = target >= 0
                diff = None
            if not bool(known.any()):
                losses[name] = pred.sum() * 0.0  # keeps the graph (DDP) without a signal
            elif diff is not None:
                losses[name] = F.smooth_l1_loss(diff, torch.zeros_like(diff))
            else:
                losses[name] = F.cross_entropy(pred[known], target[known].long())
        return losses

    def _loss(self, out: Any, y: torch.Tensor, batch: Any, criterion: Any) -> torch.Tensor:
        hp = self.hparams
        loss = hp.class_weight * criterion(self._primary(out), y)
        for name, head_loss in self._head_losses(out, batch).items():
            loss = loss + hp.heads[name]["weight"] * head_loss
        return loss

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        out, y = self._outputs(batch)
        loss = self._loss(out, y, batch, self.criterion)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, _: int) -> None:
        out, y = self._outputs(batch)
        logits = self._primary(out)
        loss = self._loss(out, y, batch, torch.nn.functional.cross_entropy)
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
