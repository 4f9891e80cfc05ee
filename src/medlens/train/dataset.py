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
    """Random flip, small affine, brightness and contrast on a normalised N x C x H x W batch,
    and (when the recipe names them) colour jitter, gamma, blur and JPEG re-encoding.

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
        img = self._acquisition(img.clamp(0, 1))
        return (img.clamp(0, 1) - mean) / std

    def _acquisition(self, img: torch.Tensor) -> torch.Tensor:
        """Randomise what a source (scanner, export, camera) changes and anatomy does not:
        colour balance, gamma, sharpness, compression. A property the audit's shortcut probe
        finds can then no longer tell the classes apart during training (all off by default)."""
        cfg = self.cfg
        n, c = img.shape[:2]
        dev = img.device
        if cfg.colour_jitter > 0 and c == 3:
            gain = 1 + (torch.rand(n, 3, 1, 1, device=dev) * 2 - 1) * cfg.colour_jitter
            grey = img.mean(dim=1, keepdim=True)
            sat = 1 + (torch.rand(n, 1, 1, 1, device=dev) * 2 - 1) * cfg.colour_jitter
            img = (grey + (img - grey) * sat) * gain
        if cfg.gamma > 0:
            g = torch.exp((torch.rand(n, 1, 1, 1, device=dev) * 2 - 1) * cfg.gamma)
            img = img.clamp(1e-6, 1) ** g
        if cfg.blur > 0:
            img = torch.stack(
                [
                    _gaussian_blur(im, float(torch.rand(1)) * cfg.blur)
                    if float(torch.rand(1)) < 0.5
                    else im
                    for im in img
                ]
            )
        if cfg.jpeg > 0:
            lo, hi = cfg.jpeg_quality
            img = torch.stack(
                [
                    _jpeg(im, int(torch.randint(lo, hi + 1, (1,))))
                    if float(torch.rand(1)) < cfg.jpeg
                    else im
                    for im in img
                ]
            )
        return img


def _gaussian_blur(im: torch.Tensor, sigma: float) -> torch.Tensor:
    """One ``C x H x W`` image blurred by a separable Gaussian of ``sigma`` pixels."""
    import torch.nn.functional as F

    if sigma < 0.1:
        return im
    r = max(1, round(2.5 * sigma))
    t = torch.arange(-r, r + 1, dtype=im.dtype, device=im.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = im.shape[0]
    x = F.pad(im[None], (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x[0]


def _jpeg(im: torch.Tensor, quality: int) -> torch.Tensor:
    """One ``C x H x W`` image in [0, 1] through an 8-bit JPEG encode/decode at ``quality``."""
    import cv2

    arr = (im.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(arr), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        return im
    dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if dec.ndim == 2:
        dec = dec[:, :, None]
    return torch.from_numpy(dec).permute(2, 0, 1).to(im.dtype).div(255).to(im.device)


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
