"""What the audit found: the report object, its findings and the per-tier copy counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from medlens.common import json_safe
from medlens.data.audit.copies import DuplicateGroup
from medlens.errors import DataError

if TYPE_CHECKING:  # type names only: no import at run time
    from medlens.data.audit.leakage import LeakageReport
    from medlens.data.audit.shortcuts import Association, ProbeResult

Severity = Literal["ok", "warning", "critical"]
SEVERITY_RANK = {"ok": 0, "warning": 1, "critical": 2}
#: the copy tiers, in the order the report lists them
TIERS = ("exact", "near-identical", "look-alike")


class AuditError(DataError):
    """The audit cannot run as asked (e.g. a split that does not cover the data)."""


@dataclass
class Finding:
    """One plain-English line of the verdict."""

    severity: Severity
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "code": self.code, "message": self.message}


def _crossing(groups: list[DuplicateGroup], attr: str) -> list[DuplicateGroup]:
    return [g for g in groups if getattr(g, attr)]


def tier_counts(
    exact_groups: list[DuplicateGroup],
    groups: list[DuplicateGroup],
    lookalikes: list[dict[str, Any]],
) -> dict[str, dict[str, int]]:
    """Each tier counted on its own: within the data folder, across folders, across splits.

    Exact: groups of identical files (exact components). Near-identical: copy groups that are
    not wholly exact, counted across folders/splits only when no exact copy already crosses.
    Look-alike: pairs (never chained).
    """
    out: dict[str, dict[str, int]] = {}
    for attr, where in (("cross_folder", "across_folders"), ("cross_split", "across_splits")):
        exact_cross = _crossing(exact_groups, attr)
        crossed = {(m["folder"], m["key"]) for g in exact_cross for m in g.members}
        near_cross = [
            g
            for g in _crossing(groups, attr)
            if g.kind == "near" and not any((m["folder"], m["key"]) in crossed for m in g.members)
        ]
        out.setdefault("exact", {})[where] = len(exact_cross)
        out.setdefault("near-identical", {})[where] = len(near_cross)
    key = {"across_folders": ("folder_a", "folder_b"), "across_splits": ("split_a", "split_b")}
    look = out.setdefault("look-alike", {})
    for where, (ka, kb) in key.items():
        look[where] = sum(1 for p in lookalikes if p[ka] and p[kb] and p[ka] != p[kb])
    out["exact"]["within_folder"] = sum(1 for g in exact_groups if not g.cross_folder)
    out["near-identical"]["within_folder"] = sum(
        1 for g in groups if g.kind == "near" and not g.cross_folder
    )
    look["within_folder"] = sum(1 for p in lookalikes if p["folder_a"] == p["folder_b"])
    out["exact"]["cross_class"] = sum(1 for g in exact_groups if g.cross_class)
    out["near-identical"]["cross_class"] = sum(
        1 for g in groups if g.kind == "near" and g.cross_class
    )
    look["cross_class"] = sum(1 for p in lookalikes if p["label_a"] != p["label_b"])
    return out


@dataclass
class AuditReport:
    """Everything :func:`audit` found. ``to_dict()`` is JSON-safe; ``verdict`` is the summary."""

    data_root: str
    classes: list[str]
    n_files: int
    n_readable: int
    class_counts: dict[str, int]
    near_threshold: int
    problems: list[dict[str, str]]
    exact_groups: list[DuplicateGroup]
    groups: list[DuplicateGroup]
    class_stats: dict[str, dict[str, Any]]
    associations: list[Association]
    probe: ProbeResult | None
    leakage: LeakageReport | None
    folder_leakage: dict[str, Any] | None
    verdict: list[Finding]
    against_root: str | None = None
    n_against: int = 0
    n_blank: int = 0
    elapsed_s: float = 0.0
    #: look-alike pairs (possibly the same patient or scan; a person decides), closest first
    lookalikes: list[dict[str, Any]] = field(default_factory=list)
    #: which exposure rule judged "over"/"under" and why (see ``shortcuts.exposure_rule``)
    exposure_rule: dict[str, str] = field(default_factory=dict)
    _copies: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def severity(self) -> Severity:
        """The worst severity in the verdict."""
        return max((f.severity for f in self.verdict), key=SEVERITY_RANK.__getitem__, default="ok")

    def copies(self) -> dict[str, int]:
        """``manifest.key`` -> copy-group id for the audited data (for ``make_splits(copies=)``)."""
        return dict(self._copies)

    def tiers(self) -> dict[str, dict[str, int]]:
        """Per-tier counts (see :func:`tier_counts`)."""
        return tier_counts(self.exact_groups, self.groups, self.lookalikes)

    def duplicate_summary(self) -> dict[str, int]:
        near = [g for g in self.groups if g.kind == "near"]
        return {
            "n_exact_groups": len(self.exact_groups),
            "n_exact_extra_copies": sum(len(g.members) - 1 for g in self.exact_groups),
            "n_near_groups": len(near),
            "n_near_images": sum(len(g.members) for g in near),
            "n_groups": len(self.groups),
            "n_images_in_groups": sum(len(g.members) for g in self.groups),
            "largest_group": max((len(g.members) for g in self.groups), default=0),
            "n_within_class": sum(1 for g in self.groups if not g.cross_class),
            "n_cross_class": sum(1 for g in self.groups if g.cross_class),
            "n_conflicting_pairs": sum(len(g.conflicts) for g in self.groups),
            "n_mixed_label_groups": sum(1 for g in self.groups if g.mixed_labels),
            "n_cross_split": sum(1 for g in self.groups if g.cross_split),
            "n_cross_folder": sum(1 for g in self.groups if g.cross_folder),
            "n_lookalike_pairs": len(self.lookalikes),
            "n_lookalike_cross_class": sum(
                1 for p in self.lookalikes if p["label_a"] != p["label_b"]
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        problem_kinds = Counter(p["kind"] for p in self.problems)
        return json_safe(
            {
                "severity": self.severity,
                "verdict": [f.to_dict() for f in self.verdict],
                "data_root": self.data_root,
                "against_root": self.against_root,
                "classes": self.classes,
                "n_files": self.n_files,
                "n_readable": self.n_readable,
                "n_against": self.n_against,
                "n_blank": self.n_blank,
                "class_counts": self.class_counts,
                "near_threshold": self.near_threshold,
                "elapsed_s": round(self.elapsed_s, 3),
                "problems": {"counts": dict(problem_kinds), "files": self.problems},
                "duplicates": {
                    **self.duplicate_summary(),
                    "tiers": self.tiers(),
                    "exact_groups": [g.to_dict() for g in self.exact_groups],
                    "groups": [g.to_dict() for g in self.groups],
                    "lookalike_pairs": self.lookalikes,
                },
                "class_stats": self.class_stats,
                "exposure_rule": self.exposure_rule,
                "shortcuts": {
                    "associations": [a.to_dict() for a in self.associations],
                    "probe": self.probe.to_dict() if self.probe else None,
                },
                "leakage": self.leakage.to_dict() if self.leakage else None,
                "folder_leakage": self.folder_leakage,
            }
        )
