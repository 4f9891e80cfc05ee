"""Dataset audit: unreadable files, copies, label conflicts, leakage and shortcuts.

Why this package exists
-----------------------
The systems medlens replaces reported 96-100 % accuracy that came from their data, not from the
images' anatomy: augmented copies written into the data folder before the split, the same image
saved under several names in train and test, labels that line up with the scanner or the file
format. None of that is visible in a training curve. :func:`audit` looks for it *before*
training; :func:`duplicate_groups` gives :func:`medlens.data.splits.make_splits` the copy groups
it needs to keep every copy in its original's split; :func:`split_leakage` checks an existing
split.

One module per job
------------------
* :mod:`.records` -- each file read once (a worker pool for larger sets) and reduced to hashes, a
  64 px thumbnail and a few numbers; images are never kept.
* :mod:`.nearsearch` -- pairs of perceptual-hash codes within a distance (multi-index hashing).
* :mod:`.copies` -- the copy finder and its three tiers (**exact**, **near-identical**,
  **look-alike**), the one definition the audit, ``medlens split`` and training share.
* :mod:`.leakage` -- copies and patients across splits, or across a second folder (``against``).
* :mod:`.shortcuts` -- class statistics, property/class association, the shortcut probe and the
  exposure rule that fits the modality.
* :mod:`.findings`, :mod:`.verdict` -- the report object and its plain-English findings.
* :mod:`.core` -- :func:`audit` itself; :mod:`.html` -- the self-contained page and JSON.

``medlens.data.splits`` imports only :mod:`.copies`; nothing here imports ``splits`` at run time,
so there is no import circle.
"""

from __future__ import annotations

from medlens.data.audit.copies import (
    DEFAULT_NEAR_THRESHOLD,
    NEAR_DETAIL,
    DuplicateGroup,
    duplicate_groups,
)
from medlens.data.audit.core import audit
from medlens.data.audit.findings import TIERS, AuditError, AuditReport, Finding
from medlens.data.audit.html import write_audit
from medlens.data.audit.leakage import LeakageError, LeakageReport, load_against, split_leakage
from medlens.data.audit.shortcuts import Association, ProbeResult

__all__ = [
    "DEFAULT_NEAR_THRESHOLD",
    "NEAR_DETAIL",
    "TIERS",
    "Association",
    "AuditError",
    "AuditReport",
    "DuplicateGroup",
    "Finding",
    "LeakageError",
    "LeakageReport",
    "ProbeResult",
    "audit",
    "duplicate_groups",
    "load_against",
    "split_leakage",
    "write_audit",
]
