"""Does the heatmap point at the lesion? Scores against ground truth, with intervals and baselines.

A localisation figure means nothing alone: a heatmap that always lights the middle of a chest
film "hits" central lesions, and any blob overlaps a large lesion. So every method is scored on
the same images as two baselines that know nothing about the image: smooth random noise
(:func:`random_cam`) and a centred Gaussian (:func:`centre_prior_cam`); a method is credited
only when the paired bootstrap interval of its difference from a baseline lies above zero.

Pattern: pure per-image functions (:func:`pointing_game`, :func:`energy_in_mask`,
:func:`topk_iou`, :func:`localisation_scores`) and a stateful aggregator
(:class:`LocalisationScorer`: ``update`` per image, ``compute`` once) that returns, per method
and metric, the mean over images with a seeded percentile-bootstrap 95 % interval. An image whose
mask is empty (nothing to localise) or whose heatmap is flat is skipped and counted, never
scored with a made-up number.

Metrics
-------
* **pointing game**: 1 when the heatmap's maximum lies inside the lesion. Ties at the maximum
  score the fraction of tied pixels inside (the expected hit under random tie-breaking), so a
  flat plateau cannot win by scan order.
* **energy in mask**: fraction of the heatmap's total mass inside the lesion.
* **top-k IoU**: IoU of the lesion with the ``top_fraction`` (default 10 %) highest pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medlens.common import rescale_to_unit
from medlens.evaluate.intervals import percentile_interval

__all__ = [
    "BASELINES",
    "CENTRE",
    "METRICS",
    "RANDOM",
    "LocalisationScorer",
    "aggregate_scores",
    "bootstrap_mean",
    "box_mask",
    "centre_prior_cam",
    "energy_in_mask",
    "localisation_scores",
    "pointing_game",
    "random_cam",
    "skip_reason",
    "topk_iou",
]

METRICS: tuple[str, ...] = ("pointing_game", "energy_in_mask", "topk_iou")
RANDOM = "random (smooth noise)"
CENTRE = "centre prior"
BASELINES: tuple[str, ...] = (RANDOM, CENTRE)
_TIE = 1e-6


# --------------------------------------------------------------------------------------------
# Pure per-image functions
# --------------------------------------------------------------------------------------------


def _check(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(cam, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if c.ndim != 2 or c.shape != m.shape:
        raise ValueError(
            f"cam {c.shape} and mask {m.shape} must be the same H x W; align the mask to the "
            "model input first"
        )
    return c, m


def skip_reason(cam: np.ndarray, mask: np.ndarray) -> str | None:
    """Why this image cannot be scored (``"empty_mask"``, ``"flat_cam"``...), or None."""
    c, m = _check(cam, mask)
    if not m.any():
        return "empty_mask"
    if m.all():
        return "full_mask"
    if not np.all(np.isfinite(c)):
        return "non_finite_cam"
    if c.min() < 0:
        return "negative_cam"
    if float(c.max() - c.min()) <= _TIE:
        return "flat_cam"
    return None


def pointing_game(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """1.0 if the heatmap's maximum is inside the lesion, 0.0 if not (ties: fraction inside).

    None when the image cannot be scored (see :func:`skip_reason`).
    """
    c, m = _check(cam, mask)
    if skip_reason(c, m):
        return None
    top = c >= c.max() - _TIE
    return float(m[top].mean())


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """Fraction of the heatmap's mass inside the lesion (None when it cannot be scored)."""
    c, m = _check(cam, mask)
    if skip_reason(c, m):
        return None
    return float(c[m].sum() / c.sum())


def topk_iou(cam: np.ndarray, mask: np.ndarray, top_fraction: float = 0.1) -> float | None:
    """IoU of the lesion with the ``top_fraction`` highest heatmap pixels (exactly that many)."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    c, m = _check(cam, mask)
    if skip_reason(c, m):
        return None
    k = max(1, round(top_fraction * c.size))
    flat = c.ravel()
    top = np.zeros(c.size, dtype=bool)
    top[np.argpartition(-flat, k - 1)[:k]] = True
    mf = m.ravel()
    inter = np.count_nonzero(top & mf)
    return float(inter / np.count_nonzero(top | mf))


def localisation_scores(
    cam: np.ndarray, mask: np.ndarray, top_fraction: float = 0.1
) -> dict[str, float] | None:
    """All :data:`METRICS` for one image, or None when it cannot be scored."""
    if skip_reason(cam, mask):
        return None
    return {
        "pointing_game": pointing_game(cam, mask),  # type: ignore[dict-item]
        "energy_in_mask": energy_in_mask(cam, mask),  # type: ignore[dict-item]
        "topk_iou": topk_iou(cam, mask, top_fraction),  # type: ignore[dict-item]
    }


def random_cam(shape: tuple[int, int], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """Smooth random heatmap in [0, 1]: Gaussian noise on a ``cells`` grid, bicubic upsampled.

    Blob sizes are those of a CAM read from a stride-8..32 layer, so it is the fair "knows
    nothing" competitor: any method must beat it on the same images.
    """
    import cv2

    h, w = int(shape[0]), int(shape[1])
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return rescale_to_unit(field, float(field.min()), float(field.max()))


def centre_prior_cam(shape: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """A centred Gaussian (std ``sigma`` of the image size), the "look in the middle" prior."""
    h, w = int(shape[0]), int(shape[1])
    y = (np.arange(h) + 0.5) / h - 0.5
    x = (np.arange(w) + 0.5) / w - 0.5
    g = np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2.0 * sigma**2))
    return (g / g.max()).astype(np.float32)


def box_mask(
    shape: tuple[int, int],
    boxes: Iterable[Sequence[float]],
    ref_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Bool ``H x W`` mask of the union of ``(x1, y1, x2, y2)`` boxes (end-exclusive pixels).

    ``ref_size`` ``(height, width)``: the frame the boxes were drawn in (e.g. 256 x 256), scaled
    to ``shape``. Boxes with NaN coordinates are ignored (an image with no finding).
    """
    h, w = int(shape[0]), int(shape[1])
    sy, sx = (h / ref_size[0], w / ref_size[1]) if ref_size else (1.0, 1.0)
    m = np.zeros((h, w), dtype=bool)
    for b in boxes:
        x1, y1, x2, y2 = (float(v) for v in b)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        c0, c1 = max(0, math.floor(min(x1, x2) * sx)), min(w, math.ceil(max(x1, x2) * sx))
        r0, r1 = max(0, math.floor(min(y1, y2) * sy)), min(h, math.ceil(max(y1, y2) * sy))
        if c1 > c0 and r1 > r0:
            m[r0:r1, c0:c1] = True
    return m


# --------------------------------------------------------------------------------------------
# Bootstrap aggregation
# --------------------------------------------------------------------------------------------


def bootstrap_mean(
    values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Mean and percentile-bootstrap interval over cases (None when there are no cases).

    ``values`` may be ``n`` (one figure per case) or ``n x m`` (several figures per case
    resampled together, reported for column 0 minus column 1: a paired difference).
    """
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    point = v if v.ndim == 1 else v[:, 0] - v[:, 1]
    out: dict[str, Any] = {"value": float(point.mean()), "ci_low": None, "ci_high": None, "n": n}
    if n_bootstrap > 0 and n >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_bootstrap, n))
        reps = point[idx].mean(axis=1)
        # A paired difference with all replicates equal keeps its (zero-width) interval: the
        # credit rule reads its bounds.
        lo, hi, _ = percentile_interval(reps, alpha, min_finite=1)
        out.update(ci_low=lo, ci_high=hi)
    return out


def aggregate_scores(
    per_image: dict[str, dict[str, dict[str, float]]],
    metrics: Sequence[str],
    baselines: Sequence[str] = BASELINES,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """Per method: each metric's mean with interval, and paired differences from each baseline.

    ``per_image``: ``{method: {image_id: {metric: value}}}``. Differences use the images both
    methods scored, resampled together (seeded; the same replicate indices for every metric so
    the figures are comparable). ``better`` is True only when the difference's interval lies
    above zero, False when it lies below or straddles zero, None when it cannot be computed.
    """
    out: dict[str, dict[str, Any]] = {}
    for method, rows in per_image.items():
        ids = list(rows)
        res: dict[str, Any] = {"n": len(ids)}
        for mt in metrics:
            vals = np.array([rows[i][mt] for i in ids if rows[i].get(mt) is not None])
            res[mt] = bootstrap_mean(vals, n_bootstrap, seed, alpha)
        if method not in baselines:
            res["vs_baselines"] = {}
            for b in baselines:
                if b not in per_image:
                    continue
                common = [i for i in ids if i in per_image[b]]
                cmp: dict[str, Any] = {}
                for mt in metrics:
                    pairs = np.array(
                        [
                            (rows[i][mt], per_image[b][i][mt])
                            for i in common
                            if rows[i].get(mt) is not None and per_image[b][i].get(mt) is not None
                        ]
                    ).reshape(-1, 2)
                    d = bootstrap_mean(pairs, n_bootstrap, seed, alpha)
                    lo, hi = d["ci_low"], d["ci_high"]
                    d["better"] = None if lo is None else bool(lo > 0)
                    d["worse"] = None if hi is None else bool(hi < 0)
                    cmp[mt] = d
                res["vs_baselines"][b] = cmp
        out[method] = res
    return out


class LocalisationScorer:
    """Accumulate per-image localisation scores for several methods; summarise with intervals.

    >>> s = LocalisationScorer(seed=0)
    >>> for img_id, cam, mask in cases:
    ...     s.update("gradcam", img_id, cam, mask)
    ...     s.update_baselines(img_id, mask)          # random + centre prior, same image
    >>> summary = s.compute()  # {"methods": {...}, "skipped": {...}, ...}

    Baseline random maps are drawn from ``(seed, image number)`` so a rerun gives the same
    figures. ``random_draws`` > 1 averages the random baseline's per-image score over several
    maps (its expected value), which narrows its interval without changing its meaning.
    """

    def __init__(
        self,
        top_fraction: float = 0.1,
        n_bootstrap: int = 1000,
        seed: int = 0,
        alpha: float = 0.05,
        random_draws: int = 4,
        centre_sigma: float = 0.25,
        random_cells: int = 6,
    ) -> None:
        self.top_fraction = top_fraction
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.alpha = alpha
        self.random_draws = max(1, int(random_draws))
        self.centre_sigma = centre_sigma
        self.random_cells = random_cells
        self.per_image: dict[str, dict[str, dict[str, float]]] = {}
        self.skipped: dict[str, dict[str, int]] = {}
        self.mask_fraction: dict[str, float] = {}  # lesion share of each scored image
        self._baseline_count = 0

    def skip(self, method: str, reason: str) -> None:
        """Count an image of ``method`` that could not be scored, with the reason."""
        counts = self.skipped.setdefault(method, {})
        counts[reason] = counts.get(reason, 0) + 1

    def add_scores(self, method: str, image_id: str, scores: dict[str, float] | None) -> None:
        """Record already computed per-image scores (None: skipped, counted as ``"skipped"``)."""
        if scores is None:
            self.skip(method, "skipped")
            return
        self.per_image.setdefault(method, {})[str(image_id)] = dict(scores)

    def update(
        self, method: str, image_id: str, cam: np.ndarray, mask: np.ndarray
    ) -> dict[str, float] | None:
        """Score one heatmap against its mask; returns the scores (None when skipped)."""
        reason = skip_reason(cam, mask)
        if reason:
            self.skip(method, reason)
            return None
        scores = localisation_scores(cam, mask, self.top_fraction)
        assert scores is not None
        self.per_image.setdefault(method, {})[str(image_id)] = scores
        self.mask_fraction[str(image_id)] = float(np.asarray(mask).astype(bool).mean())
        return scores

    def baseline_scores(self, mask: np.ndarray) -> dict[str, dict[str, float] | None]:
        """Scores of both baselines on ``mask`` (advances the random stream by one image)."""
        shape = np.asarray(mask).shape
        rng = np.random.default_rng([self.seed, 7919, self._baseline_count])
        self._baseline_count += 1
        draws = [
            localisation_scores(random_cam(shape, rng, self.random_cells), mask, self.top_fraction)
            for _ in range(self.random_draws)
        ]
        valid = [d for d in draws if d is not None]
        rnd = {k: float(np.mean([d[k] for d in valid])) for k in METRICS} if valid else None
        centre = localisation_scores(
            centre_prior_cam(shape, self.centre_sigma), mask, self.top_fraction
        )
        return {RANDOM: rnd, CENTRE: centre}

    def update_baselines(self, image_id: str, mask: np.ndarray) -> None:
        """Score both baselines on this image's mask (call once per image scored)."""
        if not np.asarray(mask).any():
            for b in BASELINES:
                self.skip(b, "empty_mask")
            self._baseline_count += 1
            return
        for b, s in self.baseline_scores(mask).items():
            self.add_scores(b, image_id, s)
        self.mask_fraction[str(image_id)] = float(np.asarray(mask).astype(bool).mean())

    def compute(self) -> dict[str, Any]:
        """Summary: per method the mean and interval of each metric, vs-baseline differences."""
        methods = aggregate_scores(
            self.per_image, METRICS, BASELINES, self.n_bootstrap, self.seed, self.alpha
        )
        for m, res in methods.items():
            res["skipped"] = dict(self.skipped.get(m, {}))
        for m, counts in self.skipped.items():
            empty = {mt: bootstrap_mean(np.empty(0)) for mt in METRICS}
            methods.setdefault(m, {"n": 0, **empty, "skipped": dict(counts)})
        return {
            "metrics": list(METRICS),
            "top_fraction": self.top_fraction,
            "baselines": list(BASELINES),
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "confidence_level": 1 - self.alpha,
            # Mean lesion share of the image: the energy in mask of a uniform heatmap.
            "mean_mask_fraction": (
                float(np.mean(list(self.mask_fraction.values()))) if self.mask_fraction else None
            ),
            "methods": methods,
        }

    def worst(self, method: str, metric: str = "energy_in_mask", n: int = 4) -> list[str]:
        """Image ids with the lowest ``metric`` for ``method`` (for review)."""
        rows = self.per_image.get(method, {})
        return sorted(rows, key=lambda i: rows[i][metric])[:n]
