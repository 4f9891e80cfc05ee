"""The audit run: read every file once, then find copies, leakage and shortcuts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medlens.data.audit.copies import (
    DEFAULT_NEAR_THRESHOLD,
    _build_groups,
    _copies_map,
    _find_copies,
    _lookalike_pairs,
)
from medlens.data.audit.findings import AuditReport
from medlens.data.audit.leakage import _assignment, _leakage, folder_leakage, load_against
from medlens.data.audit.records import _compute_records, _entries, _member, _tasks, _ticker
from medlens.data.audit.shortcuts import (
    _associations,
    _class_stats,
    _probe_matrix,
    _shortcut_probe,
    apply_exposure_rule,
)
from medlens.data.audit.verdict import _problem_kind, _verdict
from medlens.data.manifest import Manifest

if TYPE_CHECKING:  # type name only: importing splits here would close an import circle
    from medlens.data.splits import Splits


def audit(
    manifest: Manifest,
    *,
    splits: Splits | dict[str, str] | None = None,
    against: Manifest | str | Path | None = None,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    progress: bool | Callable[[int, int], None] = True,
    probe: bool = True,
    workers: int | None = None,
    seed: int = 0,
) -> AuditReport:
    """Audit a data set before training: files, duplicates, leakage, balance and shortcuts.

    ``splits`` (a :class:`Splits` or ``manifest.key -> split``) adds split leakage (copies and
    patients spanning splits); ``against`` (another data set, e.g. the test folder) adds
    folder leakage; it may also be a path (class folders, a CSV manifest, or a folder with
    ``manifest.csv`` such as ``medlens phantoms`` writes: see :func:`load_against`).
    ``near_threshold`` is the pHash + dHash distance (of 128 bits) under which two images are
    compared as candidate copies (:mod:`medlens.data.audit.copies` defines the tiers). ``progress``
    prints to stderr (True), stays silent (False) or calls ``f(done, total)``. ``probe=False``
    skips the shortcut probe (seconds on large sets). ``workers`` sets the process-pool size
    (default: the available cores, up to 8, for 300+ files). Unreadable files are reported,
    never raised: the audit's job is to list them.
    """
    t0 = time.perf_counter()
    if against is not None and not isinstance(against, Manifest):
        against = load_against(against, manifest.classes)
    assignment = _assignment(manifest, splits)
    entries = _entries(manifest, assignment, against)
    recs = _compute_records(
        _tasks(entries, "data"), workers, _ticker(progress, len(entries), "read")
    )

    problems: list[dict[str, str]] = []
    for e, r in zip(entries, recs, strict=True):
        if not r.ok:
            problems.append(
                {
                    "path": _member(e)["path"],
                    "key": e.key,
                    "folder": e.folder,
                    "kind": _problem_kind(r.reason),
                    "reason": r.reason,
                }
            )
    for folder, m in (("data", manifest), ("against", against)):
        for path in m.skipped if m is not None else []:
            problems.append(
                {
                    "path": path,
                    "key": path,
                    "folder": folder,
                    "kind": "unsupported",
                    "reason": "file type not supported (by its name); not part of the data",
                }
            )

    ok = [i for i, r in enumerate(recs) if r.ok]
    found = _find_copies([recs[i] for i in ok], near_threshold)
    exact = _build_groups(found.exact, ok, recs, entries)
    groups = _build_groups(found.groups, ok, recs, entries, found)
    copies = _copies_map(groups)

    data_idx = [i for i in ok if entries[i].folder == "data"]
    labels = [str(entries[i].sample.label) for i in data_idx]
    data_recs = [recs[i] for i in data_idx]
    associations = _associations(labels, data_recs) if data_recs else []
    probe_result = None
    if probe and data_recs:
        X, names, families = _probe_matrix(data_recs)
        probe_result = _shortcut_probe(X, np.array(labels), names, families, seed=seed)

    lookalikes = _lookalike_pairs(found, ok, entries)
    data_entries = [e for e in entries if e.folder == "data"]
    leakage = _leakage(data_entries, copies) if assignment else None
    if leakage is not None:
        leakage.n_lookalike_pairs_crossing = sum(
            1 for p in lookalikes if p["split_a"] and p["split_b"] and p["split_a"] != p["split_b"]
        )
    folder = folder_leakage(entries, groups, exact, lookalikes) if against is not None else None
    exposure = apply_exposure_rule(data_recs)

    rep = AuditReport(
        data_root=str(manifest.root) if manifest.root else "",
        classes=list(manifest.classes),
        n_files=len(manifest.samples),
        n_readable=len(data_idx),
        class_counts=manifest.counts(),
        near_threshold=near_threshold,
        problems=problems,
        exact_groups=exact,
        groups=groups,
        class_stats=_class_stats(entries, recs, manifest.classes),
        associations=associations,
        probe=probe_result,
        leakage=leakage,
        folder_leakage=folder,
        verdict=[],
        against_root=str(against.root) if against is not None and against.root else None,
        n_against=len(against.samples) if against is not None else 0,
        n_blank=sum(1 for r in data_recs if r.flat),
        lookalikes=lookalikes,
        exposure_rule=exposure,
        _copies=copies,
    )
    rep.verdict = _verdict(rep)
    rep.elapsed_s = time.perf_counter() - t0
    return rep
