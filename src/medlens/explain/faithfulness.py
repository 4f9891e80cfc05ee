"""Did the model use the region the heatmap shows? ROAD, scored against a random heatmap.

A heatmap can sit on the lesion while the model decides from somewhere else (the CAM shows where
features are strong, not what the decision needed). ROAD (Rong et al., 2022; the library's
``pytorch_grad_cam.metrics.road``) removes pixels in the heatmap's order, filling them by noisy
linear imputation so the removal itself leaks no shape, and watches the explained class's
probability: removing the *most* relevant pixels first should hurt more than removing the
*least* relevant first. The score is the library's ``ROADCombined``: the mean over removal
percentiles of ``(p(least removed) - p(most removed)) / 2``; higher is more faithful.

On its own the number has no scale, so each image is also scored with a smooth random heatmap
and a method is ``faithful`` only when the paired bootstrap interval of its difference from the
random heatmap lies above zero; otherwise it is flagged ``faithful: False`` with the reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.explain.scores import RANDOM, aggregate_scores, random_cam
from medlens.explain.targets import OutputSelect

__all__ = ["FaithfulnessScorer", "road_scores"]

ROAD_METRIC = "road"


def road_scores(
    model: nn.Module,
    x: torch.Tensor,
    cams: np.ndarray,
    target_classes: Sequence[int],
    percentiles: Sequence[int] = (20, 40, 60, 80),
    head: str | int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """ROAD-combined score per image (``N``) for ``x`` (``N x C x H x W``) and ``cams`` (``N x H x W``).

    Uses the library's ``ROADCombined`` with ``ClassifierOutputSoftmaxTarget`` (probability of
    each image's ``target_classes`` entry). The imputer's noise is drawn from a forked, seeded
    torch generator, so the figure is reproducible and the caller's RNG state is untouched.
    """
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != x.shape[0] or cams.shape[1:] != tuple(x.shape[-2:]):
        raise ValueError(f"cams {cams.shape} must be N x H x W for input {tuple(x.shape)}")
    wrapped = OutputSelect(model, head)
    modes = {m: m.training for m in model.modules()}
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in target_classes]
    try:
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            # The library's imputer hands a tensor to numpy (NumPy 2 deprecation); harmless.
            warnings.filterwarnings("ignore", "__array_wrap__", DeprecationWarning)
            torch.manual_seed(seed)
            metric = ROADCombined(percentiles=list(percentiles))
            out = metric(x.detach().float(), cams, targets, wrapped)
    finally:
        for m, flag in modes.items():
            m.training = flag
    return np.asarray(out, dtype=np.float64).reshape(-1)


class FaithfulnessScorer:
    """Per-image ROAD scores for several methods and a random heatmap; summary with flags.

    >>> f = FaithfulnessScorer(model, seed=0)
    >>> f.update("gradcam++", "img1", x, cam, target_class)   # x: 1 x C x H x W
    >>> f.update_random("img1", x, target_class)
    >>> f.compute()["methods"]["gradcam++"]["faithful"]
    """

    def __init__(
        self,
        model: nn.Module,
        percentiles: Sequence[int] = (20, 40, 60, 80),
        head: str | int | None = None,
        n_bootstrap: int = 1000,
        seed: int = 0,
        alpha: float = 0.05,
        random_cells: int = 6,
    ) -> None:
        self.model = model
        self.percentiles = tuple(int(p) for p in percentiles)
        self.head = head
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.alpha = alpha
        self.random_cells = random_cells
        self.per_image: dict[str, dict[str, dict[str, float]]] = {}
        self._count = 0

    def _score(self, x: torch.Tensor, cam: np.ndarray, target_class: int) -> float:
        xb = x if x.ndim == 4 else x[None]
        return float(
            road_scores(
                self.model,
                xb,
                np.asarray(cam, dtype=np.float32)[None],
                [target_class],
                self.percentiles,
                self.head,
                seed=self.seed + self._count,
            )[0]
        )

    def update(
        self, method: str, image_id: str, x: torch.Tensor, cam: np.ndarray, target_class: int
    ) -> float:
        """ROAD score of ``cam`` (the heatmap ``method`` gave for ``x``) on one image."""
        s = self._score(x, cam, target_class)
        self.per_image.setdefault(method, {})[str(image_id)] = {ROAD_METRIC: s}
        return s

    def update_random(self, image_id: str, x: torch.Tensor, target_class: int) -> float:
        """ROAD score of a seeded smooth random heatmap on the same image (the baseline)."""
        rng = np.random.default_rng([self.seed, 104729, self._count])
        self._count += 1
        cam = random_cam(tuple(x.shape[-2:]), rng, self.random_cells)
        s = self._score(x, cam, target_class)
        self.per_image.setdefault(RANDOM, {})[str(image_id)] = {ROAD_METRIC: s}
        return s

    def compute(self) -> dict[str, Any]:
        """Per method: ROAD mean and interval, difference from random, ``faithful`` + reason."""
        agg = aggregate_scores(
            self.per_image, (ROAD_METRIC,), (RANDOM,), self.n_bootstrap, self.seed, self.alpha
        )
        for method, res in agg.items():
            if method == RANDOM:
                continue
            d = res.get("vs_baselines", {}).get(RANDOM, {}).get(ROAD_METRIC)
            res["faithful"], res["reason"] = _verdict(d)
        return {
            "metric": "ROAD combined: mean over percentiles of (p(LeRF) - p(MoRF)) / 2",
            "percentiles": list(self.percentiles),
            "baseline": RANDOM,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "confidence_level": 1 - self.alpha,
            "methods": agg,
        }


def _verdict(d: dict[str, Any] | None) -> tuple[bool | None, str]:
    if d is None or d.get("n", 0) == 0:
        return None, "no images scored against the random heatmap"
    if d["ci_low"] is None:
        return None, f"too few images ({d['n']}) for an interval"
    diff = f"{d['value']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
    if d["ci_low"] > 0:
        return True, f"ROAD above the random heatmap: paired difference {diff}"
    if d["ci_high"] < 0:
        return False, f"ROAD below the random heatmap: paired difference {diff}"
    return False, f"no better than a random heatmap: paired difference {diff} includes 0"
