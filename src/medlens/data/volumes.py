"""Turn NIfTI volumes (and their mask volumes) into a folder of per-slice PNGs plus a manifest.

Why this module exists
----------------------
medlens trains 2-D models on manifests of image files. Real MRI/CT data arrive as volumes with
mask volumes beside them (one per reader, per structure), so something has to cut them into
slices. Doing that by hand goes wrong in quiet ways this module is written to rule out:

* **Intensity scale.** Each slice scaled on its own makes an empty slice look as bright as an
  inflamed one and erases the very contrast a classifier should learn. Here every slice of one
  volume shares *one* scale: the ``percentiles`` (default 1st-99.5th) of the whole volume, clipped.
* **Alignment.** Images and masks are sliced by the same rule as :mod:`medlens.data.io`
  (``volume[:, :, k].T``: the third voxel axis, the acquisition slice axis, no reorientation by
  the affine), and every mask volume must have the image volume's shape and affine (to float
  noise), so PNG ``k`` of a mask lies on PNG ``k`` of its image pixel for pixel.
* **Leakage.** ``patient_id`` is the subject id, so medlens' patient-grouped split keeps every
  slice of a subject in one split (neighbouring slices are near-copies of each other).
* **Identifiers.** Nothing is copied from the NIfTI header, no source path is written, and output
  names are ``<id>_z<k>.png``: the only identifier stored is the subject id the caller's file
  names already carry. File names are trusted for that id and nothing else: the format comes from
  the file's content (:func:`medlens.data.io.read_volume`), labels come from masks and a rule the
  caller picks, and which file is which mask set comes from the caller's grouping.

Output layout (``out_dir``)::

    images/<id>_z<k>.png             8-bit (or 16-bit) grey slice k of subject <id>
    masks/<name>/<id>_z<k>.png       mask set <name> on that slice, 0/255
    manifest.csv                     path, label, patient_id, <name>_mask..., <name>_fraction...,
                                     slice_index (paths relative to the CSV)
    export.json                      the settings and, per subject, slice count and intensity range

``<name>_fraction`` is the mask's area on that slice as a fraction of the slice (0..1), handy for
a regression head or for picking a ``min_pixels`` threshold. Several files of one subject in one
mask set (several readers, or one reader twice) are combined voxel-wise by the set's ``combine``
rule: ``union`` (any), ``majority`` (more than half of the files) or ``intersection`` (all);
without a rule that is an error, never a silent choice.

Only NIfTI is read: medlens' volume reader is NIfTI-only, and frame-by-frame DICOM decoding
applies each frame's own window, which would break the one-scale-per-volume rule. Convert a
DICOM series to NIfTI first (``dcm2niix``, for instance).

Call :func:`volumes_to_slices` (files or folders in, a :class:`SliceExport` summary out; the
``medlens slices`` command is a thin wrapper around it) or :func:`export_slices` (explicit file
lists, returns the manifest path).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from medlens.data.io import is_supported, read_volume
from medlens.data.io.nifti import robust_range, window_unit
from medlens.errors import DataError, ImageReadError

__all__ = [
    "DEFAULT_ID_PATTERN",
    "Combine",
    "LabelRule",
    "MaskRule",
    "SliceExport",
    "SliceInfo",
    "export_slices",
    "subject_id",
    "volumes_to_slices",
]

log = logging.getLogger(__name__)

Combine = Literal["union", "majority", "intersection"]
COMBINE_RULES: tuple[str, ...] = ("union", "majority", "intersection")

#: The subject id is the leading run of letters, digits and hyphens of the file name:
#: ``1007_STIR.nii.gz`` and ``1007_inflammation_R11.nii.gz`` both give ``1007``.
DEFAULT_ID_PATTERN = r"^([A-Za-z0-9-]+)"

# Ids end up in file names and in the patient_id column: keep them to a safe alphabet.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED_COLUMNS = frozenset({"path", "label", "patient_id", "slice_index"})
# Affines of an image and its mask may differ by float noise from re-saving, not by real shifts.
_AFFINE_ATOL = 1e-2


@dataclass(frozen=True)
class SliceInfo:
    """What a label rule sees for one slice: subject id, slice index and every mask set.

    ``masks`` maps a mask set's name to its ``bool`` ``H x W`` slice (same layout as the PNG).
    A set missing for this subject (``allow_missing_masks``) is absent from the mapping.
    """

    subject: str
    index: int
    masks: Mapping[str, np.ndarray]


LabelRule = Callable[[SliceInfo], str]


@dataclass(frozen=True)
class MaskRule:
    """The usual rule: ``positive`` when the slice of mask set ``mask`` has at least
    ``min_pixels`` lesion pixels, else ``negative``.

    ``min_pixels`` > 1 keeps specks a few pixels wide (often a reader's stray click, and invisible
    once the slice is resized for a model) from making a slice positive.
    """

    mask: str
    positive: str = "inflamed"
    negative: str = "none"
    min_pixels: int = 1

    def __post_init__(self) -> None:
        if self.min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {self.min_pixels}")
        if not self.positive.strip() or not self.negative.strip():
            raise ValueError("positive and negative labels must be non-empty")
        if self.positive == self.negative:
            raise ValueError(f"positive and negative labels are both {self.positive!r}")

    def __call__(self, info: SliceInfo) -> str:
        m = info.masks.get(self.mask)
        if m is None:
            raise DataError(
                f"subject {info.subject}: label mask set {self.mask!r} is missing, so slice "
                f"{info.index} cannot be labelled"
            )
        return self.positive if int(np.count_nonzero(m)) >= self.min_pixels else self.negative

    def describe(self) -> str:
        return (
            f"{self.positive!r} when mask set {self.mask!r} has >= {self.min_pixels} pixel(s) on "
            f"the slice, else {self.negative!r}"
        )


def subject_id(path: str | Path, pattern: str = DEFAULT_ID_PATTERN) -> str:
    """The subject id in a file name: group 1 of ``pattern`` (else the whole match).

    This is the one thing a file name is trusted for. The id must be a safe token (letters,
    digits, ``.``, ``_``, ``-``) because it becomes part of output file names.
    """
    name = Path(path).name
    m = re.search(pattern, name)
    if m is None:
        raise DataError(f"{path}: no subject id in the file name (id pattern {pattern!r})")
    sid = m.group(1) if m.re.groups else m.group(0)
    if not sid or not _SAFE_ID.match(sid):
        raise DataError(
            f"{path}: subject id {sid!r} (id pattern {pattern!r}) is not a safe token of letters, "
            "digits, '.', '_' and '-'"
        )
    return sid


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D NIfTI volume (X x Y x Z float32) and its affine; a clear error for anything else."""
    try:
        return read_volume(path)
    except ImageReadError as exc:
        if "DICOM" in exc.reason:
            raise DataError(
                f"{path}: DICOM is not exported slice by slice here (each frame carries its own "
                "window, so slices would not share one scale); convert the series to NIfTI "
                "first, e.g. with dcm2niix"
            ) from None
        raise DataError(str(exc)) from None


def _group_by_subject(paths: Sequence[Path], pattern: str) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in paths:
        out.setdefault(subject_id(p, pattern), []).append(p)
    return out


def _combine(stack: list[np.ndarray], rule: str) -> np.ndarray:
    votes = np.sum(stack, axis=0, dtype=np.int32)
    if rule == "union":
        return votes >= 1
    if rule == "intersection":
        return votes >= len(stack)
    return votes * 2 > len(stack)  # majority: strictly more than half


def _mask_volume(
    name: str,
    sid: str,
    files: list[Path],
    rule: str | None,
    shape: tuple[int, ...],
    affine: np.ndarray,
) -> np.ndarray:
    """The subject's mask volume for one set, checked against the image grid and combined."""
    if len(files) > 1 and rule is None:
        raise DataError(
            f"mask set {name!r} has {len(files)} files for subject {sid}; say how to combine "
            f"them (combine={{{name!r}: 'union' | 'majority' | 'intersection'}})"
        )
    stack: list[np.ndarray] = []
    for f in files:
        data, maff = _load_volume(f)
        if data.shape != shape:
            raise DataError(
                f"{f}: mask set {name!r} has shape {data.shape}, but the image volume of subject "
                f"{sid} has {shape}; masks must be on the image's voxel grid"
            )
        if not np.allclose(maff, affine, atol=_AFFINE_ATOL):
            raise DataError(
                f"{f}: mask set {name!r} has a different affine from the image volume of subject "
                f"{sid} (same shape, different position or spacing); resample it to the image "
                "grid first"
            )
        stack.append(np.isfinite(data) & (data != 0))
    return stack[0] if len(stack) == 1 else _combine(stack, str(rule))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _to_png_array(sl: np.ndarray, lo: float, hi: float, bit_depth: int) -> np.ndarray:
    """One slice on its volume's window, as 8- or 16-bit PNG samples."""
    top = 255 if bit_depth == 8 else 65535
    x = window_unit(sl, lo, hi)
    return np.rint(x.astype(np.float64) * top).astype(np.uint8 if bit_depth == 8 else np.uint16)


def _save_png(arr: np.ndarray, path: Path) -> None:
    """Plain PNG, no text chunks: nothing but pixels leaves this module."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")


def _check_args(
    masks: Mapping[str, Sequence[Path]],
    combine: Mapping[str, str],
    label_from: str | LabelRule | None,
    percentiles: tuple[float, float],
    bit_depth: int,
) -> None:
    for name in masks:
        if not _SAFE_NAME.match(name):
            raise DataError(
                f"mask set name {name!r}: use letters, digits and '_' (it names CSV columns and "
                "a folder), starting with a letter"
            )
        for col in (f"{name}_mask", f"{name}_fraction"):
            if col in _RESERVED_COLUMNS:
                raise DataError(f"mask set name {name!r} gives the reserved column {col!r}")
    for name, rule in combine.items():
        if name not in masks:
            raise DataError(f"combine names mask set {name!r}, which is not among {list(masks)}")
        if rule not in COMBINE_RULES:
            raise DataError(f"combine rule {rule!r} for {name!r}: use one of {COMBINE_RULES}")
    if isinstance(label_from, str) and label_from not in masks:
        raise DataError(f"label_from={label_from!r} is not a mask set ({list(masks)})")
    if isinstance(label_from, MaskRule) and label_from.mask not in masks:
        raise DataError(f"label rule reads mask set {label_from.mask!r}, not in {list(masks)}")
    lo, hi = percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise DataError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if bit_depth not in (8, 16):
        raise DataError(f"bit_depth must be 8 or 16, got {bit_depth}")


def export_slices(
    volumes: Sequence[str | Path],
    out_dir: str | Path,
    masks: Mapping[str, Sequence[str | Path]] | None = None,
    *,
    label_from: str | LabelRule | None = None,
    positive_label: str = "inflamed",
    negative_label: str = "none",
    min_pixels: int = 1,
    unlabelled: str = "unlabelled",
    combine: Mapping[str, Combine] | None = None,
    allow_missing_masks: bool = False,
    id_pattern: str = DEFAULT_ID_PATTERN,
    percentiles: tuple[float, float] = (1.0, 99.5),
    bit_depth: Literal[8, 16] = 8,
    overwrite: bool = False,
) -> Path:
    """Write every slice of every volume as a PNG, with aligned mask PNGs and a manifest.

    Parameters
    ----------
    volumes
        NIfTI image volumes, one per subject (the subject id comes from the file name via
        ``id_pattern``; two volumes with one id are an error).
    out_dir
        Output folder (created). An existing ``manifest.csv`` there is an error unless
        ``overwrite``.
    masks
        Mask sets by name, e.g. ``{"inflammation": [...], "region": [...]}``: each a list of NIfTI
        mask volumes matched to image volumes by subject id. Masks of subjects without an image
        volume are ignored (and logged). Columns ``<name>_mask`` (PNG path) and
        ``<name>_fraction`` (area fraction) are written per set.
    label_from
        How a slice gets its ``label``: the name of a mask set (``positive_label`` when that
        slice of the set has at least ``min_pixels`` pixels, else ``negative_label``), or any
        callable taking a :class:`SliceInfo` and returning a label (e.g. a :class:`MaskRule`).
        ``None`` labels every slice ``unlabelled`` (for segmentation-only or inference exports).
    combine
        Per mask set, how several files of one subject become one mask: ``union``, ``majority``
        (more than half) or ``intersection``. Needed only where a subject has several files.
    allow_missing_masks
        Leave a mask set's cells empty for a subject that has no file in it (default: error).
        The set a label rule reads may never be missing.
    percentiles
        The intensity window of each volume (clipped), shared by all of its slices.
    bit_depth
        8 (default; plenty for a [0, 1] model input) or 16 bits per PNG pixel.

    Returns the path of ``manifest.csv``.
    """
    out = Path(out_dir).expanduser().resolve()
    vol_paths = [Path(v).expanduser().resolve() for v in volumes]
    mask_sets = {k: [Path(p).expanduser().resolve() for p in v] for k, v in (masks or {}).items()}
    rules: dict[str, str] = dict(combine or {})
    _check_args(mask_sets, rules, label_from, percentiles, bit_depth)
    if not vol_paths:
        raise DataError("no volumes to export")
    rule: LabelRule | None
    if isinstance(label_from, str):
        rule = MaskRule(label_from, positive_label, negative_label, min_pixels)
    else:
        rule = label_from
    manifest = out / "manifest.csv"
    if manifest.exists() and not overwrite:
        raise DataError(f"{manifest} exists; pass overwrite=True (--overwrite) to replace it")

    by_subject = _group_by_subject(vol_paths, id_pattern)
    dupes = {s: ps for s, ps in by_subject.items() if len(ps) > 1}
    if dupes:
        sid, ps = next(iter(dupes.items()))
        raise DataError(
            f"{len(dupes)} subject id(s) have several volumes, e.g. {sid}: "
            f"{[p.name for p in ps]}; export one volume per subject (or change id_pattern)"
        )
    mask_by_subject = {
        name: _group_by_subject(files, id_pattern) for name, files in mask_sets.items()
    }
    for name, groups in mask_by_subject.items():
        stray = sorted(set(groups) - set(by_subject))
        if stray:
            log.warning("mask set %r: no image volume for subject(s) %s; ignored", name, stray)
        missing = sorted(set(by_subject) - set(groups))
        label_set = rule.mask if isinstance(rule, MaskRule) else None
        if missing and (not allow_missing_masks or name == label_set):
            raise DataError(
                f"mask set {name!r} has no file for subject(s) {missing}"
                + ("" if name == label_set else "; pass allow_missing_masks to leave them empty")
            )

    names = list(mask_sets)
    header = [
        "path",
        "label",
        "patient_id",
        *(f"{n}_mask" for n in names),
        *(f"{n}_fraction" for n in names),
        "slice_index",
    ]
    rows: list[list[str]] = []
    subjects: dict[str, dict[str, object]] = {}
    (out / "images").mkdir(parents=True, exist_ok=True)
    for sid in sorted(by_subject):
        vpath = by_subject[sid][0]
        data, affine = _load_volume(vpath)
        lo, hi = robust_range(data, percentiles)
        if hi <= lo:
            log.warning("subject %s: constant volume; its slices are written black", sid)
        mvols = {
            name: _mask_volume(
                name, sid, mask_by_subject[name][sid], rules.get(name), data.shape, affine
            )
            for name in names
            if sid in mask_by_subject[name]
        }
        n = int(data.shape[2])
        width = max(3, len(str(n - 1)))
        for k in range(n):
            stem = f"{sid}_z{k:0{width}d}"
            img_rel = f"images/{stem}.png"
            _save_png(_to_png_array(data[:, :, k].T, lo, hi, bit_depth), out / img_rel)
            sl_masks = {name: np.ascontiguousarray(m[:, :, k].T) for name, m in mvols.items()}
            mask_cells: list[str] = []
            frac_cells: list[str] = []
            for name in names:
                m = sl_masks.get(name)
                if m is None:
                    mask_cells.append("")
                    frac_cells.append("")
                    continue
                rel = f"masks/{name}/{stem}.png"
                _save_png(m.astype(np.uint8) * 255, out / rel)
                mask_cells.append(rel)
                frac_cells.append(f"{float(m.mean()):.6g}")
            label = unlabelled if rule is None else rule(SliceInfo(sid, k, sl_masks))
            if not isinstance(label, str) or not label.strip():
                raise DataError(f"label rule gave {label!r} for subject {sid}, slice {k}")
            rows.append([img_rel, label, sid, *mask_cells, *frac_cells, str(k)])
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        subjects[sid] = {
            "slices": n,
            "shape": [int(s) for s in data.shape],
            "voxel_size": [round(float(z), 6) for z in zooms],
            "intensity_range": [lo, hi],
            "mask_files": {name: len(mask_by_subject[name].get(sid, [])) for name in names},
        }
        log.info("subject %s: %d slices", sid, n)

    tmp = manifest.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(manifest)
    if rule is None:
        rule_text = f"every slice {unlabelled!r}"
    else:
        describe = getattr(rule, "describe", None)
        rule_text = describe() if callable(describe) else getattr(rule, "__name__", repr(rule))
    info = {
        "format": "medlens-slices/1",
        "slice_layout": "volume[:, :, k].T (third voxel axis, no reorientation)",
        "percentiles": list(percentiles),
        "bit_depth": bit_depth,
        "label_rule": rule_text,
        "combine": rules,
        "label_counts": dict(Counter(r[1] for r in rows)),
        "n_slices": len(rows),
        "subjects": subjects,
    }
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return manifest


# --------------------------------------------------------------------------------------------
# Files or folders in, a summary out
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceExport:
    """What :func:`volumes_to_slices` wrote: the manifest, the export record and their counts."""

    manifest: Path
    export_json: Path
    n_slices: int
    subjects: list[str]
    label_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a person: where the manifest is and what is in it."""
        return (
            f"wrote {self.manifest} ({self.n_slices} slices of {len(self.subjects)} subjects; "
            f"labels {self.label_counts})"
        )


def _expand(items: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder gives its image-named files (content is still checked)."""
    if isinstance(items, str | Path):
        items = [items]
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out += sorted(
                f
                for f in p.iterdir()
                if f.is_file() and not f.name.startswith(".") and is_supported(f)
            )
        else:
            out.append(p)
    return out


def volumes_to_slices(
    volumes: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    masks: Mapping[str, str | Path | Sequence[str | Path]] | None = None,
    *,
    label_from: str | LabelRule | None = None,
    positive_label: str = "inflamed",
    negative_label: str = "none",
    min_pixels: int = 1,
    unlabelled: str = "unlabelled",
    combine: Mapping[str, Combine] | None = None,
    allow_missing_masks: bool = False,
    id_pattern: str = DEFAULT_ID_PATTERN,
    percentiles: tuple[float, float] = (1.0, 99.5),
    bit_depth: Literal[8, 16] = 8,
    overwrite: bool = False,
) -> SliceExport:
    """Cut NIfTI volumes into a per-slice PNG manifest; files or folders in, a summary out.

    ``volumes`` and each entry of ``masks`` (mask set name -> files or folders, several allowed
    per set) may name folders: a folder gives its image-named files (``.nii``, ``.nii.gz``...;
    the content is still checked). Every other argument is :func:`export_slices`'s. Bad input
    raises :class:`~medlens.errors.DataError` (or ``ValueError`` for a bad ``min_pixels`` /
    label) with one message naming the file or setting.
    """
    mask_files = {name: _expand(paths) for name, paths in (masks or {}).items()}
    manifest = export_slices(
        _expand(volumes),
        out_dir,
        mask_files,
        label_from=label_from,
        positive_label=positive_label,
        negative_label=negative_label,
        min_pixels=min_pixels,
        unlabelled=unlabelled,
        combine=combine,
        allow_missing_masks=allow_missing_masks,
        id_pattern=id_pattern,
        percentiles=percentiles,
        bit_depth=bit_depth,
        overwrite=overwrite,
    )
    export_json = manifest.parent / "export.json"
    info = json.loads(export_json.read_text(encoding="utf-8"))
    return SliceExport(
        manifest=manifest,
        export_json=export_json,
        n_slices=int(info["n_slices"]),
        subjects=sorted(info["subjects"]),
        label_counts={str(k): int(v) for k, v in info["label_counts"].items()},
    )
