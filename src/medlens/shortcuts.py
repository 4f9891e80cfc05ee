"""Shortcut-aware training: does the preprocessing remove the acquisition cues the audit found,
and does the trained model's sensitivity rest on them?

``medlens audit`` finds acquisition properties that carry the label (a class that is almost all
RGB JPEGs from another source, an intensity or image-size difference between stages). A recipe
neutralises them in two ways, both named in the recipe:

* preprocessing that removes a property for every image (``grayscale``, ``common_form``:
  one aspect ratio, ``standardize``: per-image intensity);
* augmentation that randomises what cannot be undone (``train.augment``: ``jpeg``, ``gamma``,
  ``blur``, ``colour_jitter``).

This module measures whether that worked (``evaluate.shortcut_check: true`` puts it in the run
report):

* :func:`probe_before_after` - the audit's shortcut probe on the files (before), and the same
  probe on the pixels as decoded and on the pixels the model sees (after preprocessing); a
  probe that stays high after preprocessing means the cue survives into the model's input;
* :func:`cue_dependence` - the model's per-class sensitivity on held-out images as they are and
  with their acquisition randomised (colour mode, gamma/brightness, JPEG re-encoding); a class
  whose sensitivity collapses when the cue is randomised is **named**: its figure rests on the
  source, not the anatomy.

Orchestration beside :mod:`medlens.workflow` (it reads files, runs the preprocessing and a
:class:`~medlens.inference.Predictor`); the HTML is
:mod:`medlens.evaluate.shortcut_section`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.data.audit.shortcuts import _shortcut_probe
from medlens.preprocess.ops import crop_black_border

__all__ = [
    "DROP_NAMED",
    "cue_dependence",
    "pixel_features",
    "pixel_probe",
    "probe_before_after",
    "randomise_acquisition",
]

#: a class is named as resting on a source cue when its sensitivity drops by this much or more
DROP_NAMED = 0.2
_COLOUR_DIFF = 0.02  # mean |R-G| + |G-B| above which an image is colour (the audit's rule)
_MAX_PROBE_ROWS = 600


def pixel_features(img: np.ndarray) -> dict[str, tuple[str, float]]:
    """``{feature: (family, value)}`` of one ``H x W`` / ``H x W x 3`` image in [0, 1]: the
    properties a source changes (colour, size, intensity, black border, sharpness/compression).
    """
    x = np.asarray(img, dtype=np.float32)
    colourful = 0.0
    if x.ndim == 3:
        colourful = float(
            np.abs(x[..., 0] - x[..., 1]).mean() + np.abs(x[..., 1] - x[..., 2]).mean()
        )
        grey = x.mean(axis=2)
    else:
        grey = x
    h, w = grey.shape
    p = np.percentile(grey, [1, 5, 50, 95, 99])
    _, (y0, y1, x0, x1) = crop_black_border(grey)
    lap = np.abs(
        4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    )
    feats: dict[str, tuple[str, float]] = {
        "colourfulness": ("mode", colourful),
        "width": ("width", float(w)),
        "height": ("height", float(h)),
        "intensity_mean": ("intensity", float(grey.mean())),
        "intensity_std": ("intensity", float(grey.std())),
        "border_fraction": ("border", 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)),
        "laplacian": ("sharpness", float(lap.mean()) if lap.size else 0.0),
    }
    for q, v in zip(("p1", "p5", "p50", "p95", "p99"), p, strict=True):
        feats[f"intensity_{q}"] = ("intensity", float(v))
    return feats


def pixel_probe(images: Sequence[np.ndarray], labels: Sequence[str], seed: int = 0) -> Any:
    """The audit's shortcut probe (:func:`medlens.data.audit.shortcuts._shortcut_probe`: same
    forest, folds, shuffled baseline and severity rule) on :func:`pixel_features` of arrays."""
    rows = [pixel_features(im) for im in images]
    names = list(rows[0]) if rows else []
    X = np.array([[r[n][1] for n in names] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    keep = [j for j in range(X.shape[1]) if np.ptp(X[:, j]) > 1e-9]
    X = X[:, keep]
    kept = [names[j] for j in keep]
    families: dict[str, list[int]] = {}
    for j, n in enumerate(kept):
        families.setdefault(rows[0][n][0], []).append(j)
    return _shortcut_probe(X, np.array([str(v) for v in labels]), kept, families, seed=seed)


def _subsample(samples: Sequence[Any], limit: int, seed: int) -> list[Any]:
    if len(samples) <= limit:
        return list(samples)
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
    return [samples[i] for i in idx]


def probe_before_after(manifest: Any, pipeline: Any, seed: int = 0) -> dict[str, Any]:
    """The shortcut probe before and after ``pipeline`` on ``manifest``'s images.

    ``files``: the audit's probe (format, colour mode, bit depth, size, file size, intensity,
    border); ``decoded``: :func:`pixel_probe` on the images as read; ``preprocessed``: the same
    probe on the images as the model sees them (the pipeline's output before normalisation).
    At most 600 images (stratified by the seeded subsample) keep it to seconds.
    """
    from medlens.data.audit import audit
    from medlens.data.manifest import Manifest

    samples = _subsample(manifest.samples, _MAX_PROBE_ROWS, seed)
    sub = Manifest(samples, manifest.classes, manifest.root)
    files = audit(sub, progress=False, workers=1, seed=seed).probe
    raw, pre, labels = [], [], []
    for s in samples:
        try:
            arr = s.load().array
            out = pipeline(arr).display
        except Exception:  # unreadable files are the audit's to list
            continue
        raw.append(arr)
        pre.append(out)
        labels.append(str(s.label))
    return {
        "n": len(labels),
        "files": files.to_dict() if files is not None else None,
        "decoded": pixel_probe(raw, labels, seed).to_dict(),
        "preprocessed": pixel_probe(pre, labels, seed).to_dict(),
        "steps": [step["step"] for step in pipeline.to_config()],
    }


def randomise_acquisition(
    img: np.ndarray, rng: np.random.Generator, colour_modality: bool = False
) -> np.ndarray:
    """One image with its acquisition randomised, its anatomy kept.

    Each with probability 1/2: colour <-> grey (a colour image becomes grey; a grey one takes a
    random tint), a random gamma (``exp(U(-0.4, 0.4))``) and brightness offset (+-0.15), and an
    8-bit JPEG re-encoding at quality 30-95. What a model reads from these alone changes at
    random while the anatomy stays where it was. In a ``colour_modality`` (stained microscopy,
    photographs: most of the data set is colour) the colour itself is content, so it is
    re-balanced (each channel's gain +-15 %) instead of removed.
    """
    import cv2

    x = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if colour_modality:
        if rng.random() < 0.5 and x.ndim == 3:
            x = np.clip(x * rng.uniform(0.85, 1.15, size=3).astype(np.float32), 0.0, 1.0)
    elif rng.random() < 0.5:
        if x.ndim == 3:
            x = x.mean(axis=2)
        else:
            tint = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
            x = np.clip(x[..., None] * tint, 0.0, 1.0)
    if rng.random() < 0.5:
        x = np.clip(
            x ** np.float32(np.exp(rng.uniform(-0.4, 0.4))) + rng.uniform(-0.15, 0.15), 0, 1
        )
    if rng.random() < 0.5:
        u8 = np.rint(x * 255).astype(np.uint8)
        bgr = u8[..., ::-1] if u8.ndim == 3 else u8
        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 96))]
        )
        if ok:
            dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            x = (dec[..., ::-1] if dec.ndim == 3 else dec).astype(np.float32) / 255.0
    return np.ascontiguousarray(x, dtype=np.float32)


def _proportion(hit: int, n: int, alpha: float) -> dict[str, Any]:
    """``hit / n`` with its two-sided exact (Clopper-Pearson) interval."""
    if not n:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    from scipy.stats import binomtest

    ci = binomtest(hit, n).proportion_ci(confidence_level=1 - alpha, method="exact")
    return {"value": hit / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": n}


def _predict(predictor: Any, arrays: Sequence[np.ndarray], batch: int = 32) -> np.ndarray:
    out = []
    for start in range(0, len(arrays), batch):
        chunk = [predictor.pipeline(a).image for a in arrays[start : start + batch]]
        out.append(np.asarray(predictor.predict_tensor(np.stack(chunk))).argmax(1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def cue_dependence(
    predictor: Any,
    samples: Sequence[Any],
    classes: Sequence[str],
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Per-class sensitivity on ``samples`` as they are and with acquisition randomised.

    Returns ``{"n", "accuracy": {"as_is", "randomised"}, "per_class": {class: {"as_is",
    "randomised", "drop"}}, "named": [classes whose drop >= DROP_NAMED], "rule"}``; each
    sensitivity is ``{"value", "ci_low", "ci_high", "n"}`` with exact (Clopper-Pearson) bounds.
    """
    rng = np.random.default_rng(seed)
    arrays, y = [], []
    for s in samples:
        try:
            arrays.append(s.load().array)
        except Exception:  # unreadable test files are reported elsewhere
            continue
        y.append(list(classes).index(str(s.label)))
    y_arr = np.array(y, dtype=np.int64)
    colourful = [pixel_features(a)["colourfulness"][1] > _COLOUR_DIFF for a in arrays]
    colour_modality = bool(arrays) and float(np.mean(colourful)) > 0.5
    as_is = _predict(predictor, arrays)
    randomised = _predict(
        predictor, [randomise_acquisition(a, rng, colour_modality) for a in arrays]
    )
    alpha = 1 - confidence

    def sens(pred: np.ndarray, k: int) -> dict[str, Any]:
        rows = y_arr == k
        return _proportion(int((pred[rows] == k).sum()), int(rows.sum()), alpha)

    per_class: dict[str, Any] = {}
    named = []
    for k, c in enumerate(classes):
        a, r = sens(as_is, k), sens(randomised, k)
        drop = None if a["value"] is None else round(a["value"] - r["value"], 4)
        per_class[c] = {"as_is": a, "randomised": r, "drop": drop}
        if drop is not None and drop >= DROP_NAMED:
            named.append(c)

    return {
        "n": len(y_arr),
        "accuracy": {
            "as_is": _proportion(int((as_is == y_arr).sum()), len(y_arr), alpha),
            "randomised": _proportion(int((randomised == y_arr).sum()), len(y_arr), alpha),
        },
        "per_class": per_class,
        "named": named,
        "colour_modality": colour_modality,
        "rule": (
            f"a class is named when its sensitivity drops by {DROP_NAMED:.2f} or more once each "
            "image's "
            + ("colour balance" if colour_modality else "colour mode")
            + ", gamma/brightness and JPEG encoding are randomised (each with probability 1/2, "
            "seeded)"
        ),
    }


def shortcut_section(predictor: Any, manifest: Any, splits: Any, recipe: Any) -> dict[str, Any]:
    """``metrics["shortcuts"]`` of a run: the probe before/after the recipe's preprocessing on
    the training and validation images, and the cue test on the held-out test split (grouped
    by copy like every split, so no test image has a copy in training)."""
    from medlens.data.manifest import Manifest

    seed = recipe.split.seed
    fit = splits.samples(manifest, "train") + splits.samples(manifest, "val")
    probe = probe_before_after(
        Manifest(fit, manifest.classes, manifest.root), recipe.pipeline(), seed
    )
    test = splits.samples(manifest, "test")
    if getattr(predictor, "modalities", None):  # several images per case: no single re-encoding
        cue: dict[str, Any] = {"skipped": "a multi-modality model: the cue test reads one image"}
    else:
        cue = cue_dependence(
            predictor, test, list(recipe.task.classes), seed, recipe.evaluate.confidence
        )
    augment = recipe.train.augment
    randomisers = {
        k: getattr(augment, k)
        for k in ("jpeg", "gamma", "blur", "colour_jitter")
        if augment is not None and getattr(augment, k)
    }
    return {"probe": probe, "cue_test": cue, "augment_randomisers": randomisers}
