"""Manifests: the list of labelled samples a run uses, from a folder tree, a CSV or an ``.npz``.

A manifest is what everything downstream agrees on: the split, the cache, the bundle's data
fingerprint. Building one reads directory listings and CSV text only; images are decoded later
(and unreadable ones reported by path then), so listing 100,000 files stays cheap.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medlens.common import bytes_sha256, file_sha256
from medlens.data.io import LoadedImage, is_supported, read_image, read_npz_image
from medlens.errors import DataError

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``path`` is absolute; ``npz_key``/``npz_index`` address array data."""

    path: str
    label: str | None
    patient_id: str | None = None
    mask_path: str | None = None
    boxes: tuple[Box, ...] = ()
    npz_key: str | None = None
    npz_index: int | None = None
    extra: tuple[tuple[str, str], ...] = ()  # other manifest columns a recipe reads (heads, ...)

    def get(self, column: str) -> str | None:
        """The value of an extra manifest column; None when empty or not read."""
        return next((v for k, v in self.extra if k == column and v != ""), None)

    @property
    def uid(self) -> str:
        """Stable identity within a data set (used by splits and caches)."""
        if self.npz_key is not None:
            return f"{self.path}::{self.npz_key}[{self.npz_index}]"
        return self.path

    def load(self) -> LoadedImage:
        if self.npz_key is not None:
            return read_npz_image(self.path, self.npz_key, int(self.npz_index or 0))
        return read_image(self.path)


@dataclass
class Manifest:
    samples: list[Sample]
    classes: list[str]
    root: Path | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> list[int]:
        """Class indices in ``classes`` order."""
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[s.label] for s in self.samples if s.label is not None]

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {k: c.get(k, 0) for k in self.classes}

    def subset(self, keys: Iterable[str]) -> Manifest:
        keep = set(keys)
        return Manifest([s for s in self.samples if self.key(s) in keep], self.classes, self.root)

    def relpath(self, s: Sample) -> str:
        if self.root is not None:
            try:
                return Path(s.path).relative_to(self.root).as_posix()
            except ValueError:
                pass
        return s.path

    def key(self, s: Sample) -> str:
        """A sample's identity relative to the data root, so splits survive moving the folder."""
        rel = self.relpath(s)
        return f"{rel}::{s.npz_key}[{s.npz_index}]" if s.npz_key is not None else rel

    def fingerprint(self, hash_files: bool = True) -> dict[str, Any]:
        """A fingerprint of the training data: the manifest rows plus a hash of every file.

        The bundle stores it so anyone can check which data a model was trained on.
        """
        rows = sorted(
            (
                self.relpath(s),
                s.npz_key or "",
                str(s.npz_index or ""),
                s.label or "",
                s.patient_id or "",
            )
            for s in self.samples
        )
        manifest_sha = bytes_sha256(json.dumps(rows).encode())
        out: dict[str, Any] = {
            "n_samples": len(self.samples),
            "class_counts": self.counts(),
            "manifest_sha256": manifest_sha,
        }
        if hash_files:
            files = sorted({s.path for s in self.samples})
            # The hash of the files' hashes in path order (one string, so one hash call).
            out["files_sha256"] = bytes_sha256("".join(file_sha256(f) for f in files).encode())
            out["n_files"] = len(files)
        return out

    def to_csv(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "patient_id", "mask_path", "npz_key", "npz_index"])
            for s in self.samples:
                w.writerow(
                    [
                        s.path,
                        s.label or "",
                        s.patient_id or "",
                        s.mask_path or "",
                        s.npz_key or "",
                        "" if s.npz_index is None else s.npz_index,
                    ]
                )


def _match_classes(
    found: Sequence[str], classes: Sequence[str] | None, where: str
) -> dict[str, str]:
    """Map names found in the data to recipe class names (case-insensitive)."""
    if classes is None:
        return {f: f for f in found}
    lower = {c.lower(): c for c in classes}
    mapping = {f: lower[f.lower()] for f in found if f.lower() in lower}
    missing = [c for c in classes if c not in mapping.values()]
    if missing:
        raise DataError(
            f"{where}: no images for class(es) {missing}; found {sorted(found)}. Name one folder "
            "(or label) per class as in the recipe's task.classes (case does not matter), or map "
            "other names with data.class_aliases, e.g. {TB: tuberculosis}."
        )
    return mapping


def from_folder(root: str | Path, classes: Sequence[str] | None = None) -> Manifest:
    """One sub-folder per class (searched recursively); other sub-folders are ignored."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    mapping = _match_classes(subdirs, classes, str(root))
    samples: list[Sample] = []
    skipped: list[str] = []
    for folder, label in mapping.items():
        for p in sorted((root / folder).rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            if is_supported(p):
                samples.append(Sample(str(p), label))
            else:
                skipped.append(str(p))
    if not samples:
        raise DataError(f"{root}: no image files found in the class folders")
    order = list(classes) if classes is not None else sorted(mapping.values())
    return Manifest(samples, order, root, skipped)


def from_csv(
    csv_path: str | Path,
    classes: Sequence[str] | None = None,
    path_column: str = "path",
    label_column: str = "label",
    patient_column: str | None = "patient_id",
    mask_column: str | None = "mask_path",
    box_columns: Sequence[str] | None = None,
    label_map: dict[int, str] | None = None,
    extra_columns: Sequence[str] = (),
    path_columns: Sequence[str] = (),
) -> Manifest:
    """Rows of path, label and optional patient id, mask path and box; paths relative to the CSV.

    Several rows for one path (one per lesion box) merge into one sample with several boxes.
    ``extra_columns`` (extra targets, other modalities' images, region masks) are carried on each
    sample; those also in ``path_columns`` are resolved relative to the CSV like ``path``.
    """
    csv_path = Path(csv_path).expanduser().resolve()
    if not csv_path.is_file():
        raise DataError(f"manifest CSV not found: {csv_path}")
    base = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for col in [path_column, label_column, *extra_columns]:
            if col not in header:
                raise DataError(f"{csv_path}: column {col!r} is missing (columns: {header})")
        rows = list(reader)
    by_path: dict[str, dict[str, Any]] = {}
    for lineno, row in enumerate(rows, start=2):
        raw = (row.get(path_column) or "").strip()
        label = (row.get(label_column) or "").strip()
        if not raw or not label:
            raise DataError(f"{csv_path}, line {lineno}: empty {path_column!r} or {label_column!r}")
        if label_map is not None:
            try:
                label = label_map[int(float(label))]
            except (ValueError, KeyError):
                raise DataError(
                    f"{csv_path}, line {lineno}: label {label!r} not in data.label_map"
                ) from None
        p = Path(raw).expanduser()
        p = (p if p.is_absolute() else base / p).resolve()
        entry = by_path.setdefault(
            str(p), {"label": label, "patient": None, "mask": None, "boxes": [], "extra": {}}
        )
        for col in extra_columns:
            val = (row.get(col) or "").strip()
            if val and col in path_columns:
                q = Path(val).expanduser()
                val = str((q if q.is_absolute() else base / q).resolve())
            if val or col not in entry["extra"]:
                entry["extra"][col] = val
        if entry["label"] != label:
            raise DataError(
                f"{csv_path}, line {lineno}: {raw} has two labels ({entry['label']}, {label})"
            )
        if patient_column and (pid := (row.get(patient_column) or "").strip()):
            entry["patient"] = pid
        if mask_column and (mraw := (row.get(mask_column) or "").strip()):
            m = Path(mraw).expanduser()
            entry["mask"] = str((m if m.is_absolute() else base / m).resolve())
        if box_columns:
            vals = [(row.get(c) or "").strip() for c in box_columns]
            if all(vals):
                try:
                    entry["boxes"].append(tuple(float(v) for v in vals))
                except ValueError:
                    raise DataError(
                        f"{csv_path}, line {lineno}: box values {vals} are not numbers"
                    ) from None
    labels = sorted({e["label"] for e in by_path.values()})
    mapping = _match_classes(labels, classes, str(csv_path))
    samples = [
        Sample(
            p,
            mapping[e["label"]],
            e["patient"],
            e["mask"],
            tuple(e["boxes"]),
            extra=tuple(e["extra"].items()),
        )
        for p, e in by_path.items()
        if e["label"] in mapping
    ]
    if not samples:
        raise DataError(f"{csv_path}: no rows with a label from the recipe's classes")
    order = list(classes) if classes is not None else sorted(mapping.values())
    return Manifest(samples, order, base)


def from_npz(
    npz_path: str | Path,
    label_map: dict[int, str],
    keys: Sequence[tuple[str, str]] = (("train_images", "train_labels"),),
    classes: Sequence[str] | None = None,
) -> Manifest:
    """MedMNIST-style arrays: each (images key, labels key) pair adds its rows as samples."""
    import numpy as np

    npz_path = Path(npz_path).expanduser().resolve()
    if not npz_path.is_file():
        raise DataError(f"npz file not found: {npz_path}")
    try:
        data = np.load(npz_path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read {npz_path}: {exc}") from None
    samples: list[Sample] = []
    with data:
        for img_key, lab_key in keys:
            for k in (img_key, lab_key):
                if k not in data.files:
                    raise DataError(f"{npz_path}: key {k!r} missing (keys: {data.files})")
            labels = np.asarray(data[lab_key]).reshape(len(data[lab_key]), -1)[:, 0]
            for i, lab in enumerate(labels):
                name = label_map.get(int(lab))
                if name is None:
                    raise DataError(
                        f"{npz_path}: label {int(lab)} in {lab_key!r} not in data.label_map"
                    )
                samples.append(Sample(str(npz_path), name, npz_key=img_key, npz_index=i))
    found = sorted({s.label for s in samples if s.label})
    mapping = _match_classes(found, classes, str(npz_path))
    samples = [replace(s, label=mapping[s.label]) for s in samples if s.label in mapping]
    order = list(classes) if classes is not None else sorted(mapping.values())
    return Manifest(samples, order, npz_path.parent)


def merge_labels(manifest: Manifest, merge: dict[str, str], classes: Sequence[str]) -> Manifest:
    """Relabel samples (case-insensitive source names) and keep those in ``classes``."""
    lower = {k.lower(): v for k, v in merge.items()}
    relabelled = [
        replace(s, label=lower.get((s.label or "").lower(), s.label)) for s in manifest.samples
    ]
    found = sorted({s.label for s in relabelled if s.label})
    mapping = _match_classes(found, classes, "data.merge_classes")
    samples = [replace(s, label=mapping[s.label]) for s in relabelled if s.label in mapping]
    return Manifest(samples, list(classes), manifest.root, manifest.skipped)


def load_manifest(
    data_cfg: Any,
    path: Path | None,
    classes: Sequence[str] | None,
    extra_columns: Sequence[str] = (),
    path_columns: Sequence[str] = (),
) -> Manifest:
    """The manifest a recipe's ``data`` section describes (``path`` already resolved).

    For ``source: phantoms`` the caller generates the phantoms first and passes their manifest
    CSV as ``path``. ``data.merge_classes`` relabels first (several source classes -> one).
    ``extra_columns`` (multi-task targets, other modalities, region masks) need
    a CSV manifest: a folder tree or an ``.npz`` has nowhere to keep them.
    """
    # Aliases (TB -> tuberculosis) and merges (glioma -> tumor) are one relabelling step.
    aliases = getattr(data_cfg, "class_aliases", None) or {}
    merge = {**aliases, **(getattr(data_cfg, "merge_classes", None) or {})}
    if merge:
        raw = load_manifest(
            data_cfg.model_copy(update={"merge_classes": None, "class_aliases": None}),
            path,
            None,
            extra_columns,
            path_columns,
        )
        return merge_labels(raw, merge, classes)
    if path is None:
        raise DataError("data.path is not set: give it in the recipe or with --data PATH")
    if not path.exists():
        raise DataError(f"data not found: {path}")
    if path.is_dir():
        # A folder is a class-per-sub-folder tree, unless it carries a manifest.csv (phantoms).
        if data_cfg.source == "folder" or not (path / "manifest.csv").is_file():
            if extra_columns:
                raise DataError(
                    f"{path}: this recipe reads columns {list(extra_columns)} (heads, modalities "
                    "or masks); a folder of class sub-folders has none. Give a CSV manifest."
                )
            return from_folder(path, classes)
        path = path / "manifest.csv"
    if path.suffix == ".npz" and extra_columns:
        raise DataError(f"{path}: an .npz has no columns {list(extra_columns)}; give a CSV")
    if path.suffix == ".npz":
        if data_cfg.label_map is None:
            raise DataError(f"{path}: an .npz needs data.label_map (integer label -> class name)")
        return from_npz(path, data_cfg.label_map, data_cfg.npz_keys, classes)
    return from_csv(
        path,
        classes,
        data_cfg.path_column,
        data_cfg.label_column,
        data_cfg.patient_column,
        data_cfg.mask_column,
        data_cfg.box_columns,
        data_cfg.label_map,
        extra_columns,
        path_columns,
    )
