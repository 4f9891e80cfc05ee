"""Leakage: copies and patients on both sides of a train/val/test split, or of two folders.

A split leaks when a copy group (exact or near-identical, :mod:`.copies`) or a patient spans more
than one of train/val/test: the model is then tested on images it trained on. Two folders (a
training folder and its test folder, given as ``against``) leak the same way. Look-alike pairs are
counted beside, never as leakage: a person decides whether they are one patient. Examples always
pair a file from each side.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens.data.audit.copies import DEFAULT_NEAR_THRESHOLD, DuplicateGroup, duplicate_groups
from medlens.data.audit.findings import AuditError
from medlens.data.audit.records import _entries, _Entry, _member
from medlens.data.manifest import Manifest
from medlens.errors import DataError

if TYPE_CHECKING:  # type name only: importing splits here would close an import circle
    from medlens.data.splits import Splits


class LeakageError(DataError):
    """A split puts copies of one image, or one patient, in more than one split."""


@dataclass
class LeakageReport:
    """Copies or patients that a split puts on both sides of a train/val/test boundary."""

    n_images: int
    n_groups: int
    n_groups_crossing: int
    n_images_crossing: int
    split_pairs: dict[str, int]  # "train+test" -> number of crossing groups
    #: a few crossing groups, each as two "split: path" lines from two different splits
    examples: list[list[str]]
    n_patients: int
    patients_crossing: dict[str, list[str]]  # patient id -> the splits it appears in
    message: str
    #: look-alike pairs (possibly one patient; not copies) whose two images sit in two splits
    n_lookalike_pairs_crossing: int = 0

    @property
    def ok(self) -> bool:
        return self.n_groups_crossing == 0 and not self.patients_crossing

    def raise_if_leaking(self) -> None:
        """Stop a run that would be evaluated on copies of its training images."""
        if not self.ok:
            raise LeakageError(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "n_images": self.n_images,
            "n_groups": self.n_groups,
            "n_groups_crossing": self.n_groups_crossing,
            "n_images_crossing": self.n_images_crossing,
            "split_pairs": self.split_pairs,
            "examples": self.examples,
            "n_patients": self.n_patients,
            "n_patients_crossing": len(self.patients_crossing),
            "patients_crossing": self.patients_crossing,
            "n_lookalike_pairs_crossing": self.n_lookalike_pairs_crossing,
            "message": self.message,
        }


def _assignment(manifest: Manifest, splits: Splits | dict[str, str] | None) -> dict[str, str]:
    """``manifest.key -> split`` from a :class:`~medlens.data.splits.Splits` or a plain dict.

    ``Splits`` is recognised by its ``assignment`` attribute, so this package never imports
    ``medlens.data.splits`` (which imports the copy finder: that would be a circle).
    """
    if splits is None:
        return {}
    assignment = dict(getattr(splits, "assignment", splits))
    keys = {manifest.key(s) for s in manifest.samples}
    if keys and not keys & assignment.keys():
        example = next(iter(assignment), "(empty)")
        raise AuditError(
            f"the split does not cover this data: none of its {len(assignment)} keys (e.g. "
            f"{example!r}) is an image of {manifest.root}. Pass the splits.csv written for this "
            "data folder, or draw one with `medlens split`."
        )
    return assignment


def _pair_across(group: Sequence[_Entry], side: Callable[[_Entry], str]) -> list[str]:
    """Two members of a crossing group from two different sides, as "side: path" lines."""
    first = group[0]
    other = next((e for e in group if side(e) != side(first)), group[-1])
    return [f"{side(e)}: {_member(e)['path']}" for e in (first, other)]


def _leakage(entries: Sequence[_Entry], copies: dict[str, int]) -> LeakageReport:
    """Copy groups and patients that span more than one split (``entries`` of one manifest)."""
    by_group: dict[int, list[_Entry]] = defaultdict(list)
    patients: dict[str, set[str]] = defaultdict(set)
    n_images = 0
    for e in entries:
        if e.split is None:
            continue
        n_images += 1
        if e.key in copies:
            by_group[copies[e.key]].append(e)
        if e.sample.patient_id:
            patients[e.sample.patient_id].add(e.split)
    crossing = [g for g in by_group.values() if len({e.split for e in g}) > 1]
    pairs: Counter[str] = Counter()
    for g in crossing:
        pairs["+".join(sorted({e.split or "" for e in g}))] += 1
    examples = [_pair_across(g, lambda e: e.split or "") for g in crossing[:5]]
    patients_crossing = {p: sorted(s) for p, s in sorted(patients.items()) if len(s) > 1}
    n_img_cross = sum(len(g) for g in crossing)
    parts = []
    if crossing:
        where = ", ".join(f"{k}: {v}" for k, v in sorted(pairs.items()))
        ex = "; ".join(" = ".join(x for x in g[:2]) for g in examples[:2])
        parts.append(
            f"{len(crossing)} group(s) of copies ({n_img_cross} images) span more than one "
            f"split ({where}); e.g. {ex}"
        )
    if patients_crossing:
        some = ", ".join(f"{p} ({'/'.join(s)})" for p, s in list(patients_crossing.items())[:5])
        parts.append(f"{len(patients_crossing)} patient(s) appear in more than one split: {some}")
    if parts:
        message = (
            "the split leaks: "
            + ". ".join(parts)
            + ". A model evaluated on this split is tested on images it trained on. Draw a new "
            "split that keeps copies and patients together (`medlens split DATA`, or "
            "make_splits(..., copies=duplicate_groups(manifest)))."
        )
    else:
        message = (
            f"no leakage: none of {len(by_group)} copy group(s) and {len(patients)} patient(s) "
            f"spans two splits ({n_images} images checked)"
        )
    return LeakageReport(
        n_images=n_images,
        n_groups=len(by_group),
        n_groups_crossing=len(crossing),
        n_images_crossing=n_img_cross,
        split_pairs=dict(pairs),
        examples=examples,
        n_patients=len(patients),
        patients_crossing=patients_crossing,
        message=message,
    )


def split_leakage(
    manifest: Manifest,
    splits: Splits | dict[str, str],
    *,
    copies: dict[str, int] | None = None,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    progress: bool | Callable[[int, int], None] = False,
    workers: int | None = None,
) -> LeakageReport:
    """Which copy groups and patients a split puts in more than one of train/val/test.

    ``copies`` (from :func:`duplicate_groups` or ``AuditReport.copies()``) avoids hashing the
    images again. ``report.raise_if_leaking()`` raises :class:`LeakageError` with the message.
    """
    assignment = _assignment(manifest, splits)
    if copies is None:
        copies = duplicate_groups(manifest, near_threshold, progress=progress, workers=workers)
    return _leakage(_entries(manifest, assignment, None), copies)


def folder_leakage(
    entries: Sequence[_Entry],
    groups: Sequence[DuplicateGroup],
    exact_groups: Sequence[DuplicateGroup],
    lookalikes: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Copies and patients shared by the data folder and ``against``, each tier on its own.

    ``examples`` pair the first data-folder member of a crossing group with its first
    other-folder member, so each example names one file from each side.
    """

    def pair(g: DuplicateGroup) -> list[str]:
        mine = next(m for m in g.members if m["folder"] == "data")
        theirs = next(m for m in g.members if m["folder"] == "against")
        return [mine["path"], theirs["path"]]

    crossing = [g for g in groups if g.cross_folder]
    exact = [g for g in exact_groups if g.cross_folder]
    crossed = {m["key"] for g in exact for m in g.members if m["folder"] == "against"}
    near = [
        g
        for g in crossing
        if g.kind == "near"
        and not any(m["folder"] == "against" and m["key"] in crossed for m in g.members)
    ]
    look = [p for p in lookalikes if p["folder_a"] != p["folder_b"]]
    pid_data = {e.sample.patient_id for e in entries if e.folder == "data" and e.sample.patient_id}
    pid_against = {
        e.sample.patient_id for e in entries if e.folder == "against" and e.sample.patient_id
    }

    def n_against(gs: Sequence[DuplicateGroup]) -> int:
        return sum(1 for g in gs for m in g.members if m["folder"] == "against")

    return {
        "n_groups_crossing": len(crossing),
        "n_against_images": n_against(crossing),
        "exact": {"n_groups": len(exact), "n_against_images": n_against(exact)},
        "near_identical": {"n_groups": len(near), "n_against_images": n_against(near)},
        "lookalike": {
            "n_pairs": len(look),
            "examples": [[p["a"], p["b"]] for p in look[:5]],
        },
        "group_ids": [g.id for g in crossing],
        "examples": [pair(g) for g in crossing[:5]],
        "patients_crossing": sorted(pid_data & pid_against),
    }


def load_against(path: str | Path, classes: Sequence[str] | None = None) -> Manifest:
    """The data set to check for leakage against: class folders, a CSV manifest, or a folder
    holding ``manifest.csv`` (what ``medlens phantoms`` writes).

    ``classes`` (the audited data's) keeps the labels comparable; a CSV's labels outside them are
    refused by :func:`~medlens.data.manifest.from_csv` with the row that has them.
    """
    from medlens.data.manifest import from_csv, from_folder

    p = Path(path).expanduser().resolve()
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise AuditError(
                f"--against {p}: give a folder of class folders, a folder with manifest.csv, or "
                "a CSV manifest (path,label[,patient_id])."
            )
        return from_csv(p, classes)
    if (p / "manifest.csv").is_file():
        return from_csv(p / "manifest.csv", classes)
    if not p.is_dir():
        raise AuditError(f"--against {p}: no such folder or CSV file.")
    return from_folder(p, classes)
