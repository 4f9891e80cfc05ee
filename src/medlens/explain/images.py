"""Explain files through a bundle: overlays on disk, per-image scores, a data-set summary.

Everything goes through the :class:`~medlens.inference.Predictor` so the heatmap is computed on
exactly the tensor serving would classify (the bundle's own preprocessing) and drawn on that
tensor's display image. Lesion masks are given in the *original* image's pixels; they are carried
through the same crop and resize steps (:func:`align_mask`), so scores compare pixels that
correspond.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.io import read_mask
from medlens.errors import MedlensError
from medlens.explain.cam import compute_cam, normalise_method
from medlens.explain.scores import CENTRE, RANDOM, LocalisationScorer, skip_reason
from medlens.explain.targets import ExplainError
from medlens.preprocess import align_mask

__all__ = [
    "ExplanationRecord",
    "align_mask",
    "evaluate_explanations",
    "explain_images",
    "localisation_summary",
]

MaskLike = str | Path | np.ndarray | None


@dataclass
class ExplanationRecord:
    """One explained image. ``scores`` (the method's localisation scores) and
    ``baseline_scores`` (random / centre prior on the same mask) are None without a mask;
    ``skipped`` says why a given mask could not be scored; ``error`` why the image failed."""

    path: str
    method: str
    predicted: str | None = None
    predicted_index: int | None = None
    probability: float | None = None
    explained_class: str | None = None
    layer: str | None = None
    png: str | None = None
    mask: str | None = None
    scores: dict[str, float] | None = None
    baseline_scores: dict[str, dict[str, float] | None] | None = None
    skipped: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("++", "pp")).strip("_") or "image"


def _class_index(classes: Sequence[str], target: int | str | None) -> int | None:
    if target is None or isinstance(target, int):
        return target
    if target not in classes:
        raise ExplainError(f"class {target!r} is not one of the model's classes {list(classes)}")
    return list(classes).index(target)


def explain_images(
    predictor: Any,
    images: Sequence[str | Path],
    method: str,
    out_dir: str | Path,
    mask_paths: Sequence[MaskLike] | None = None,
    *,
    target_class: int | str | None = None,
    colormap: str = "jet",
    alpha: float = 0.4,
    top_fraction: float = 0.1,
    seed: int = 0,
    at_original: bool = False,
    **opts: Any,
) -> list[ExplanationRecord]:
    """Write one overlay PNG per image to ``out_dir`` and return a record per image.

    ``at_original``: draw on the image as read, at its own resolution, with the heatmap carried
    back through the crop and resize (:func:`~medlens.explain.draw.to_original`), instead of on
    the model's input.

    ``target_class`` (index or name): the class explained; default each image's predicted
    class. ``mask_paths`` (same length as ``images``; None entries allowed): lesion masks in
    the original images' pixels; when given, the record holds the method's localisation scores
    and both baselines' on the same mask. ``opts`` go to :func:`~medlens.explain.cam.compute_cam`
    (``aug_smooth``, ``n_samples``...). An unreadable image gives a record with ``error``.
    """
    import torch

    from medlens.explain.draw import on_original, overlay, save_png

    name = normalise_method(method)
    if getattr(predictor, "modalities", None):
        raise ExplainError(
            "this bundle fuses several images: explain it per modality "
            "(medlens.explain.explain_fusion_cases; its run report shows one heatmap per modality)"
        )
    if mask_paths is not None and len(mask_paths) != len(images):
        raise ExplainError(f"{len(mask_paths)} masks for {len(images)} images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(predictor.classes)
    tc = _class_index(classes, target_class)
    scorer = LocalisationScorer(top_fraction=top_fraction, seed=seed)
    records: list[ExplanationRecord] = []
    for i, img in enumerate(images):
        rec = ExplanationRecord(path=str(img), method=name)
        records.append(rec)
        try:
            pre = predictor.preprocess(img)
        except MedlensError as exc:
            rec.error = str(exc)
            continue
        probs = predictor.predict_tensor(pre.image[None])[0]
        k = int(np.argmax(probs))
        rec.predicted, rec.predicted_index, rec.probability = classes[k], k, float(probs[k])
        x = torch.from_numpy(np.ascontiguousarray(pre.image[None])).to(predictor.device)
        res = compute_cam(predictor.model, x, name, k if tc is None else tc, **opts)
        rec.explained_class, rec.layer = classes[res.target_class], res.layer
        png = out / f"{i:04d}_{_slug(Path(str(img)).stem)}_{_slug(name)}.png"
        shown, heat = pre.display, res.cam
        if at_original:
            shown, heat = on_original(img, res.cam, predictor.pipeline, pre.info)
        rec.png = str(save_png(png, overlay(shown, heat, colormap, alpha)))
        mp = mask_paths[i] if mask_paths is not None else None
        if mp is None:
            continue
        rec.mask = str(mp) if isinstance(mp, str | Path) else "<array>"
        try:
            arr = read_mask(mp) if isinstance(mp, str | Path) else np.asarray(mp)
            mask = align_mask(arr, predictor.pipeline, pre.info)
        except MedlensError as exc:
            rec.skipped = f"mask unreadable: {exc}"
            continue
        reason = skip_reason(res.cam, mask)
        if reason:
            rec.skipped = reason
            continue
        rec.scores = scorer.update(name, str(i), res.cam, mask)
        rec.baseline_scores = scorer.baseline_scores(mask)
    return records


def localisation_summary(
    records: Sequence[ExplanationRecord],
    n_bootstrap: int = 1000,
    seed: int = 0,
    top_fraction: float = 0.1,
) -> dict[str, Any]:
    """The :class:`LocalisationScorer` summary of records written by :func:`explain_images`."""
    scorer = LocalisationScorer(top_fraction=top_fraction, n_bootstrap=n_bootstrap, seed=seed)
    for i, r in enumerate(records):
        if r.mask is None:
            continue
        if r.scores is None:
            scorer.skip(r.method, r.skipped or r.error or "skipped")
            continue
        scorer.add_scores(r.method, str(i), r.scores)
        for b, s in (r.baseline_scores or {}).items():
            scorer.add_scores(b, str(i), s)
    return scorer.compute()


def evaluate_explanations(
    predictor: Any,
    images: Sequence[str | Path],
    masks: Sequence[MaskLike],
    methods: Sequence[str] = ("gradcam", "gradcam++"),
    *,
    target_classes: Sequence[int | str | None] | None = None,
    faithfulness: bool = True,
    faithfulness_images: int = 30,
    road_percentiles: Sequence[int] = (20, 40, 60, 80),
    top_fraction: float = 0.1,
    n_bootstrap: int = 1000,
    seed: int = 0,
    **opts: Any,
) -> dict[str, Any]:
    """Localisation (every method vs both baselines) and faithfulness (ROAD vs random) over a
    data set: the figures behind the report's explanation section.

    ``masks``: per image a mask path/array in original pixels or None (an image without a mask
    is not scored for localisation; an empty mask is skipped and counted). ``target_classes``:
    per image the class to explain (default: predicted). ROAD is slow (a sparse solve per
    removal step), so it runs on the first ``faithfulness_images`` readable images only;
    ``faithfulness=False`` skips it.
    """
    import torch

    from medlens.explain.faithfulness import FaithfulnessScorer

    names = [normalise_method(m) for m in methods]
    if len(masks) != len(images):
        raise ExplainError(f"{len(masks)} masks for {len(images)} images")
    classes = list(predictor.classes)
    loc = LocalisationScorer(top_fraction=top_fraction, n_bootstrap=n_bootstrap, seed=seed)
    faith = FaithfulnessScorer(
        predictor.model, road_percentiles, n_bootstrap=n_bootstrap, seed=seed
    )
    errors: dict[str, str] = {}
    n_faith = 0
    for i, img in enumerate(images):
        try:
            pre = predictor.preprocess(img)
        except MedlensError as exc:
            errors[str(img)] = str(exc)
            continue
        probs = predictor.predict_tensor(pre.image[None])[0]
        wanted = target_classes[i] if target_classes is not None else None
        cls = _class_index(classes, wanted)
        cls = int(np.argmax(probs)) if cls is None else cls
        x = torch.from_numpy(np.ascontiguousarray(pre.image[None])).to(predictor.device)
        mask = None
        if masks[i] is not None:
            try:
                mi = masks[i]
                arr = read_mask(mi) if isinstance(mi, str | Path) else np.asarray(mi)
                mask = align_mask(arr, predictor.pipeline, pre.info)
            except MedlensError as exc:
                errors[str(img)] = f"mask: {exc}"
        cams = {m: compute_cam(predictor.model, x, m, cls, **opts).cam for m in names}
        key = str(i)
        if mask is not None:
            for m, cam in cams.items():
                loc.update(m, key, cam, mask)
            loc.update_baselines(key, mask)
        if faithfulness and n_faith < faithfulness_images:
            for m, cam in cams.items():
                faith.update(m, key, x.cpu(), cam, cls)
            faith.update_random(key, x.cpu(), cls)
            n_faith += 1
    return {
        "methods": names,
        "n_images": len(images),
        "errors": errors,
        "localisation": loc.compute(),
        "faithfulness": faith.compute() if faithfulness else None,
        "worst": {m: loc.worst(m, "energy_in_mask", 4) for m in names},
        "image_ids": {str(i): str(p) for i, p in enumerate(images)},
        "baselines": [RANDOM, CENTRE],
    }
