"""Reader-versus-reader agreement of segmentation masks: the ceiling a model's Dice is judged by.

When two readers (or one reader twice) outline the same lesion, their Dice says how well the
task is defined at all: a model whose Dice against one reader equals the readers' Dice with each
other is as good as a second reader, and no model can be shown to do better than that on these
masks. The SIJ MRI set (``sij_mri/inflammation/R11, R12, R21, R22``) has inflammation drawn by
two readers, twice each (R11/R12 = reader 1, R21/R22 = reader 2).

Figures, all with :func:`medlens.evaluate.segmentation.dice_iou` (the one Dice; two empty masks
score 1):

* **per subject**: Dice of the two whole volumes;
* **pooled over subjects**: the mean of the subjects' volume Dice, with a bootstrap interval over
  subjects (with five subjects the interval is wide, and honest about it);
* **slice level**: mean Dice over the slices either mask marks, with the bootstrap resampling
  subjects with all their slices, the figure to set beside a 2-D (slice) model's Dice.

``inter-reader`` pools the four cross pairs (R11/R12 against R21/R22) per subject, so each subject
counts once; ``intra`` is each reader against themself (R11 vs R12, R21 vs R22).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DataError
from medlens.evaluate.intervals import bootstrap_statistic
from medlens.evaluate.segmentation import dice_iou

__all__ = [
    "INTER_READER_PAIRS",
    "INTRA_READER_PAIRS",
    "load_reader_masks",
    "pair_dice",
    "reader_agreement",
]

#: reader 1 (first and second reading) against reader 2 (first and second reading)
INTER_READER_PAIRS: tuple[tuple[str, str], ...] = (
    ("R11", "R21"),
    ("R11", "R22"),
    ("R12", "R21"),
    ("R12", "R22"),
)
#: each reader against their own second reading
INTRA_READER_PAIRS: tuple[tuple[str, str], ...] = (("R11", "R12"), ("R21", "R22"))

_SUBJECT = re.compile(r"^(?P<subject>[^_]+)_")


def load_reader_masks(
    root: str | Path, readers: Sequence[str] = ("R11", "R12", "R21", "R22")
) -> dict[str, dict[str, np.ndarray]]:
    """``{subject: {reader: bool volume}}`` from ``root/<reader>/<subject>_*.nii[.gz]``.

    Only subjects every reader outlined are kept (agreement needs both masks).
    """
    import nibabel as nib

    root = Path(root)
    found: dict[str, dict[str, np.ndarray]] = {}
    for reader in readers:
        folder = root / reader
        if not folder.is_dir():
            raise DataError(f"{folder}: no mask folder for reader {reader}")
        for path in sorted(folder.glob("*.nii*")):
            m = _SUBJECT.match(path.name)
            if m is None:
                continue
            vol = np.asanyarray(nib.load(str(path)).dataobj) > 0
            found.setdefault(m["subject"], {})[reader] = vol
    complete = {s: v for s, v in found.items() if all(r in v for r in readers)}
    if not complete:
        raise DataError(f"{root}: no subject has masks from every reader {list(readers)}")
    return dict(sorted(complete.items()))


def pair_dice(a: np.ndarray, b: np.ndarray, slice_axis: int = -1) -> dict[str, Any]:
    """Volume Dice of two masks and the per-slice Dice of the slices either one marks."""
    if a.shape != b.shape:
        raise DataError(f"reader masks differ in shape: {a.shape} vs {b.shape}")
    volume = float(dice_iou(a[None], b[None])[0][0])
    sa, sb = np.moveaxis(a, slice_axis, 0), np.moveaxis(b, slice_axis, 0)
    marked = (sa.reshape(len(sa), -1).any(1)) | (sb.reshape(len(sb), -1).any(1))
    per_slice = dice_iou(sa[marked], sb[marked])[0] if marked.any() else np.zeros(0)
    return {"volume": volume, "slices": per_slice, "voxels": (int(a.sum()), int(b.sum()))}


def _summary(
    per_subject: Mapping[str, float],
    slice_dice: Sequence[np.ndarray],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    subj = np.array(list(per_subject.values()), dtype=np.float64)
    pooled = bootstrap_statistic([subj], lambda v: float(v.mean()), n_bootstrap, seed)
    values = np.concatenate([np.asarray(s, np.float64) for s in slice_dice]) if slice_dice else []
    groups = [k for k, s in zip(per_subject, slice_dice, strict=True) for _ in range(len(s))]
    slices = bootstrap_statistic(
        [np.asarray(values)], lambda v: float(v.mean()), n_bootstrap, seed, groups=groups
    )
    return {
        "per_subject": {k: round(v, 4) for k, v in per_subject.items()},
        "subjects": len(subj),
        "volume_dice": pooled,
        "slices": len(values),
        "slice_dice": slices,
    }


def reader_agreement(
    masks: Mapping[str, Mapping[str, np.ndarray]],
    n_bootstrap: int = 1000,
    seed: int = 0,
    slice_axis: int = -1,
) -> dict[str, Any]:
    """Inter-reader and intra-reader Dice, per subject and pooled with intervals.

    Returns ``{"inter_reader": summary, "R11 vs R12": summary, "R21 vs R22": summary,
    "pairs": {"R11 vs R21": summary, ...}}``; a summary holds ``per_subject`` (volume Dice),
    ``volume_dice`` (mean over subjects, bootstrap over subjects) and ``slice_dice`` (mean over
    marked slices, subjects resampled with their slices).
    """
    subjects = list(masks)

    def summarise(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
        per_subject: dict[str, float] = {}
        slice_sets: list[np.ndarray] = []
        for s in subjects:
            results = [pair_dice(masks[s][a], masks[s][b], slice_axis) for a, b in pairs]
            per_subject[s] = float(np.mean([r["volume"] for r in results]))
            slice_sets.append(np.concatenate([r["slices"] for r in results]))
        return _summary(per_subject, slice_sets, n_bootstrap, seed)

    out: dict[str, Any] = {"inter_reader": summarise(INTER_READER_PAIRS)}
    for a, b in INTRA_READER_PAIRS:
        out[f"{a} vs {b}"] = summarise([(a, b)])
    out["pairs"] = {f"{a} vs {b}": summarise([(a, b)]) for a, b in INTER_READER_PAIRS}
    out["rule"] = (
        "Dice of two readers' masks (medlens.evaluate.segmentation.dice_iou; two empty masks "
        "score 1); inter-reader = mean of the four R1x vs R2x pairs per subject"
    )
    return out
