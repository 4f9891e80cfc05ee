"""Stratified train/val/test splits, grouped by patient and by copy, written once and reused.

Grouping keeps every image of one patient in one split (a model must never be tested on a patient
it trained on), and, when copy groups are given (``copies``, from
:func:`medlens.data.audit.copies.duplicate_groups`), every exact or near-identical copy of an
image in its original's split: the same image saved under two names, or an augmented copy
written into the data folder, would otherwise be trained on and then "tested". When the data
carry no patient ids, look-alikes (likely adjacent slices or frames of one scan) are kept
together too, in bounded groups (:func:`lookalikes_wanted`, :func:`split_grouping`). Groups are the union of both
relations (union-find): two copies of one image from two patients tie both patients together.
The split is written to ``splits.csv`` beside the run; a later run over the same data reads it
back instead of drawing a new one, so a resumed or repeated run is evaluated on the same held-out
images. scikit-learn's ``StratifiedGroupKFold`` does the grouping and stratification.

Of the audit, this module imports only the copy finder (:mod:`medlens.data.audit.copies`), and
lazily, so a split and an audit always mean the same thing by "copy" and import no circle.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medlens.data.manifest import Manifest, Sample
from medlens.errors import DataError

if TYPE_CHECKING:
    from medlens.data.audit.copies import CopyGrouping

SPLITS = ("train", "val", "test")


@dataclass
class Splits:
    assignment: dict[str, str]  # manifest key -> "train" | "val" | "test"

    def samples(self, manifest: Manifest, split: str) -> list[Sample]:
        return [s for s in manifest.samples if self.assignment.get(manifest.key(s)) == split]

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for v in self.assignment.values() if v == k) for k in SPLITS}


def _fold_out(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of about ``fraction`` of rows, stratified by y, whole groups only."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1.0 / fraction))
    # Every class needs at least n_splits groups for the stratifier; fall back gracefully.
    _, counts = np.unique(y, return_counts=True)
    n_splits = int(min(n_splits, max(2, counts.min())))
    # With few patients (say 5), hold out one whole patient rather than fail: the fold count
    # cannot exceed the number of groups.
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError(
            f"only {n_groups} patient/copy group left to split: whole patients cannot be held "
            "out. Add patients, or set split.group_by_patient: false (then one patient's images "
            "would cross splits, which the report flags)."
        )
    n_splits = min(n_splits, n_groups)
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(iter(sgkf.split(np.zeros(len(y)), y, groups)))
    mask = np.zeros(len(y), dtype=bool)
    mask[held] = True
    return mask


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def split_groups(
    manifest: Manifest, group_by_patient: bool = True, copies: dict[str, int] | None = None
) -> list[int]:
    """One group id per sample: samples sharing a patient id or a copy group share a group.

    Union-find over both relations, so a chain (A copy of B, B same patient as C) is one group.
    """
    n = len(manifest.samples)
    parent = list(range(n))
    first: dict[tuple[str, object], int] = {}
    for i, s in enumerate(manifest.samples):
        links: list[tuple[str, object]] = []
        if group_by_patient and s.patient_id:
            links.append(("patient", s.patient_id))
        if copies:
            gid = copies.get(manifest.key(s))
            if gid is not None:
                links.append(("copy", gid))
        for link in links:
            j = first.setdefault(link, i)
            ri, rj = _find(parent, i), _find(parent, j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    return [_find(parent, i) for i in range(n)]


def make_splits(
    manifest: Manifest,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    group_by_patient: bool = True,
    copies: dict[str, int] | None = None,
    find_copies: bool = False,
    group_lookalikes: bool = False,
) -> Splits:
    """Draw a stratified split that never separates a patient's images or copies of an image.

    ``copies`` maps ``manifest.key(sample)`` to a copy-group id (from
    :func:`medlens.data.audit.copies.duplicate_groups` or ``AuditReport.copies()``);
    ``find_copies=True`` computes it here (reads and hashes every image once), with look-alike
    pairs tied together too when ``group_lookalikes`` is set.
    """
    if len(manifest) < 6:
        raise DataError(
            f"only {len(manifest)} labelled images: too few to split into train/val/test"
        )
    if copies is None and find_copies:
        from medlens.data.audit.copies import duplicate_groups

        copies = duplicate_groups(manifest, group_lookalikes=group_lookalikes)
    y = np.array(manifest.labels())
    uids = [manifest.key(s) for s in manifest.samples]
    if not copies:  # the original grouping, so existing seeds draw the same split as before
        groups = np.array(
            [
                (s.patient_id if group_by_patient else None) or manifest.key(s)
                for s in manifest.samples
            ]
        )
    else:
        groups = np.array(split_groups(manifest, group_by_patient, copies))
        largest = int(np.unique(groups, return_counts=True)[1].max())
        if largest > (1.0 - val - test) * len(uids):
            raise DataError(
                f"{largest} of {len(uids)} images are tied into one group (patient ids and "
                "copies joined): too large to fit in the training split. Check the patient ids, "
                "or run `medlens audit` to see the duplicate groups (a lower near-copy threshold "
                "splits look-alike chains)."
            )
    test_mask = _fold_out(y, groups, test, seed)
    rest = np.flatnonzero(~test_mask)
    val_mask_rest = _fold_out(y[rest], groups[rest], val / (1.0 - test), seed + 1)
    assignment = {u: "train" for u in uids}
    for i in np.flatnonzero(test_mask):
        assignment[uids[i]] = "test"
    for i in rest[val_mask_rest]:
        assignment[uids[i]] = "val"
    return Splits(assignment)


def lookalikes_wanted(manifest: Manifest, cfg: object) -> bool:
    """Whether a split of ``manifest`` ties look-alikes together, as ``cfg.group_lookalikes``
    says: true / false, or "auto" (the default) = when no image carries a patient id.

    Without patient ids, the adjacent slices of one scan or the frames of one sweep look like
    independent images to a split: one lands in training, its neighbour in test, and the test
    figures measure recall of a scan already seen. The audit's look-alike tier is the best
    evidence left of "same patient or scan".
    """
    want = getattr(cfg, "group_lookalikes", "auto")
    if want == "auto":
        return not any(s.patient_id for s in manifest.samples)
    return bool(want)


def split_grouping(
    manifest: Manifest, cfg: object, *, progress: bool = False
) -> CopyGrouping | None:
    """The :class:`~medlens.data.audit.copies.CopyGrouping` a split of ``manifest`` keeps
    together, as a recipe's split section asks: ``group_copies`` (default on),
    ``copy_threshold`` (the audit's candidate threshold when absent) and ``group_lookalikes``
    (:func:`lookalikes_wanted`). None when copies are not grouped.

    ``.groups`` goes to the split, ``.copies`` to the leakage check (a reused split drawn
    without look-alike ties must not be refused for them), ``.info`` to the run's report
    (with ``patient_ids``: whether any image carries one).
    """
    if not getattr(cfg, "group_copies", True):
        return None
    from medlens.data.audit.copies import DEFAULT_NEAR_THRESHOLD, copy_grouping

    threshold = getattr(cfg, "copy_threshold", None)
    grouping = copy_grouping(
        manifest,
        DEFAULT_NEAR_THRESHOLD if threshold is None else int(threshold),
        progress=progress,
        group_lookalikes=lookalikes_wanted(manifest, cfg),
    )
    grouping.info["patient_ids"] = any(s.patient_id for s in manifest.samples)
    grouping.info["setting"] = getattr(cfg, "group_lookalikes", "auto")
    return grouping


def split_copies(
    manifest: Manifest, cfg: object, *, progress: bool = False
) -> dict[str, int] | None:
    """The groups a split of ``manifest`` must keep together (copies, and look-alikes when
    :func:`lookalikes_wanted`), as :func:`split_grouping` finds them. None when copies are not
    grouped.

    The one place that turns split settings into copy groups, so ``medlens split`` and training
    agree; the tiers are the audit's (:mod:`medlens.data.audit.copies`).
    """
    grouping = split_grouping(manifest, cfg, progress=progress)
    return None if grouping is None else grouping.groups


def write_splits(splits: Splits, manifest: Manifest, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["key", "label", "patient_id", "split"])
        for s in manifest.samples:
            k = manifest.key(s)
            w.writerow([k, s.label, s.patient_id or "", splits.assignment[k]])
    tmp.replace(path)


def read_splits(path: Path, manifest: Manifest) -> Splits:
    """Read a splits file and check it covers exactly this manifest."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    assignment: dict[str, str] = {}
    for i, row in enumerate(rows, start=2):
        split = row.get("split")
        if split not in SPLITS or not row.get("key"):
            raise DataError(f"{path}, line {i}: bad row (split must be one of {SPLITS})")
        assignment[row["key"]] = split
    have = {manifest.key(s) for s in manifest.samples}
    missing = have - assignment.keys()
    extra = assignment.keys() - have
    if missing or extra:
        raise DataError(
            f"{path} does not match the data: {len(missing)} image(s) not in it, {len(extra)} in "
            "it but not in the data. Delete it (or use a new output folder) to draw a new split."
        )
    return Splits(assignment)


def load_or_make_splits(
    manifest: Manifest,
    cfg: object,
    path: Path,
    *,
    copies: dict[str, int] | None = None,
) -> tuple[Splits, bool]:
    """Reuse ``path`` when it exists; else draw, write and return a new split.

    Copies are kept together when ``copies`` is given, or when ``cfg.group_copies`` is true
    (then they are found here). Returns ``(splits, reused)``.
    """
    if path.is_file():
        return read_splits(path, manifest), True
    splits = make_splits(
        manifest,
        val=getattr(cfg, "val", 0.15),
        test=getattr(cfg, "test", 0.15),
        seed=getattr(cfg, "seed", 0),
        group_by_patient=getattr(cfg, "group_by_patient", True),
        copies=copies,
        find_copies=bool(getattr(cfg, "group_copies", False)),
        group_lookalikes=lookalikes_wanted(manifest, cfg),
    )
    for name in SPLITS:
        if splits.counts()[name] == 0:
            raise DataError(
                f"the {name} split is empty: the data set is too small for the split fractions"
            )
    write_splits(splits, manifest, path)
    return splits, False
