"""Torch datasets over the preprocessed cache, and train-time batch augmentation.

The cache holds exactly what inference computes; augmentation (applied to training batches only)
is the one difference between training and serving inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medlens.recipes import AugmentConfig


class Augment:
    """Random flip, small affine, brightness and contrast on a normalised N x C x H x W batch.

    It runs on whole batches (one ``affine_grid``/``grid_sample`` call with a random matrix per
    image) after the batch reaches the device: per-image torchvision transforms in the loader cost
    more than the small CNN's training step on a CPU.
    """

    def __init__(self, cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        self.cfg = cfg
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        cfg = self.cfg
        n = x.shape[0]
        dev = x.device
        mean, std = self.mean.to(dev), self.std.to(dev)
        img = x * std + mean  # intensity units, where 0 is black
        if cfg.hflip > 0:
            flip = torch.rand(n, device=dev) < cfg.hflip
            img = torch.where(flip.view(-1, 1, 1, 1), img.flip(-1), img)
        lo, hi = cfg.scale
        if cfg.rotate_degrees or cfg.translate or (lo, hi) != (1.0, 1.0):
            ang = (torch.rand(n, device=dev) * 2 - 1) * cfg.rotate_degrees * torch.pi / 180
            scale = lo + torch.rand(n, device=dev) * (hi - lo)
            shift = (torch.rand(n, 2, device=dev) * 2 - 1) * cfg.translate * 2  # grid units
            cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
            theta = torch.stack(
                [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)],
                1,
            )
            grid = F.affine_grid(theta, list(img.shape), align_corners=False)
            img = F.grid_sample(
                img, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        if cfg.contrast > 0:
            factor = 1 + (torch.rand(n, 1, 1, 1, device=dev) * 2 - 1) * cfg.contrast
            m = img.mean(dim=(1, 2, 3), keepdim=True)
            img = (img - m) * factor + m
        if cfg.brightness > 0:
            img = img + (torch.rand(n, 1, 1, 1, device=dev) * 2 - 1) * cfg.brightness
        return (img.clamp(0, 1) - mean) / std


class CachedDataset(Dataset):
    """Rows of an :class:`~medlens.train.cache.ImageCache` with integer labels."""

    def __init__(self, array: np.ndarray, rows: Sequence[int], labels: Sequence[int]) -> None:
        self.array = array
        self.rows = list(rows)
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.array(self.array[self.rows[i]], dtype=np.float32, copy=True))
        return x, self.labels[i]


class RecordDataset(Dataset):
    """Rows as dict records: the image (or ``{modality: image}``), the class, extra targets.

    ``targets`` maps a head name to a per-row array over the *cache's* rows (``-1`` / NaN where
    unknown); ``modal`` maps each extra modality to ``(array, ok)`` from its own cache, so a case
    whose CT could not be read trains with ``present[ct] = False`` instead of being dropped.
    """

    def __init__(
        self,
        array: np.ndarray,
        rows: Sequence[int],
        labels: Sequence[int],
        targets: dict[str, np.ndarray] | None = None,
        modal: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        main_modality: str | None = None,
    ) -> None:
        self.array = array
        self.rows = list(rows)
        self.labels = list(labels)
        self.targets = targets or {}
        self.modal = modal or {}
        self.main = main_modality

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def _tensor(array: np.ndarray, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(array[row], dtype=np.float32, copy=True))

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        x: torch.Tensor | dict[str, torch.Tensor] = self._tensor(self.array, r)
        rec: dict = {"y": self.labels[i]}
        if self.modal:
            x = {str(self.main): x}
            present = {str(self.main): True}
            for m, (arr, ok) in self.modal.items():
                x[m] = self._tensor(arr, r)
                present[m] = bool(ok[r])
            rec["present"] = present
        rec["x"] = x
        for name, values in self.targets.items():
            v = values[r]
            rec[f"t_{name}"] = (
                torch.tensor(float(v), dtype=torch.float32)
                if values.dtype.kind == "f"
                else torch.tensor(int(v), dtype=torch.long)
            )
        return rec
