"""The verdict: plain-English findings, worst first, from an :class:`AuditReport`."""

from __future__ import annotations

from collections import Counter
from typing import Any

from medlens.data.audit.findings import SEVERITY_RANK, AuditReport, Finding, Severity
from medlens.data.audit.shortcuts import CONTENT_FAMILIES

_IMBALANCE_RATIO = 3.0


def _problem_kind(reason: str) -> str:
    r = reason.lower()
    if "0 bytes" in r or "empty" in r:
        return "zero_byte"
    if "truncated" in r or "corrupt" in r:
        return "truncated_or_corrupt"
    if "not an image" in r or "array file" in r:
        return "not_an_image"
    if "not found" in r or "permission" in r or "cannot open" in r or "cannot access" in r:
        return "inaccessible"
    return "unreadable"


def _show(c: dict[str, Any]) -> str:
    sign = "=" if c["kind"] == "exact" else f"~ (distance {c['distance']}, detail {c['detail']})"
    return f"{c['a']} ({c['label_a']}) {sign} {c['b']} ({c['label_b']})"


def _copy_findings(rep: AuditReport) -> list[Finding]:
    """One line per copy tier inside the audited data, then label conflicts."""
    out: list[Finding] = []
    s = rep.duplicate_summary()
    data_exact = [g for g in rep.exact_groups if not g.cross_folder]
    if data_exact:
        extra = sum(len(g.members) - 1 for g in data_exact)
        out.append(
            Finding(
                "warning",
                "exact_duplicates",
                f"exact copies (same bytes or pixels): {len(data_exact)} group(s), {extra} extra "
                f"file(s), e.g. {' = '.join(data_exact[0].paths[:2])}. Copies inflate the data "
                "and, split apart, the test score; `medlens split` keeps them in one split.",
            )
        )
    near = [g for g in rep.groups if g.kind == "near" and not g.cross_folder]
    if near:
        big = s["largest_group"]
        chain = ""
        if big > max(20, 0.02 * rep.n_readable):
            chain = (
                f" The largest group holds {big} images: check it in the report before "
                "trusting a split of this data."
            )
        out.append(
            Finding(
                "warning",
                "near_duplicates",
                f"near-identical copies (one image resized, re-encoded, re-exposed or mirrored): "
                f"{len(near)} group(s), {sum(len(g.members) for g in near)} images, e.g. "
                f"{' ~ '.join(near[0].paths[:2])}. Augmented copies belong in training only, "
                "made on the fly; `medlens split` keeps each group in one split." + chain,
            )
        )
    look = [p for p in rep.lookalikes if p["folder_a"] == p["folder_b"] == "data"]
    if look:
        cross = [p for p in look if p["label_a"] != p["label_b"]]
        split = [p for p in look if p["split_a"] and p["split_b"] and p["split_a"] != p["split_b"]]
        p0 = (cross or look)[0]
        out.append(
            Finding(
                "warning" if cross or split else "ok",
                "lookalikes",
                f"look-alike pairs (alike, but not the same picture: possibly one patient or "
                f"scan, a person decides): {len(look)} pair(s), {len(cross)} with different "
                f"labels, {len(split)} across splits, e.g. {p0['a']} ({p0['label_a']}) ~ "
                f"{p0['b']} ({p0['label_b']}). Not grouped, not counted as leakage; listed in "
                "audit.json (duplicates.lookalike_pairs).",
            )
        )
    conflicts = sorted((c for g in rep.groups for c in g.conflicts), key=lambda c: c["distance"])
    if conflicts:
        out.append(
            Finding(
                "critical",
                "conflicting_labels",
                f"{len(conflicts)} pair(s) of exact or near-identical copies carry different "
                f"labels, e.g. {_show(conflicts[0])}. Decide the true label and delete the "
                "other copy.",
            )
        )
    return out


def _folder_findings(rep: AuditReport) -> list[Finding]:
    """Copies shared with the ``against`` folder: each tier on its own line, always printed."""
    fl = rep.folder_leakage or {}
    other = rep.against_root or "the other folder"
    out: list[Finding] = []
    ex = fl.get("examples") or []
    for code, key, what in (
        ("folder_leakage", "exact", "exact copies"),
        ("folder_leakage_near", "near_identical", "near-identical copies"),
    ):
        n = fl.get(key, {}).get("n_groups", 0)
        k = fl.get(key, {}).get("n_against_images", 0)
        tail = (
            f"; e.g. {ex[0][0]} = {ex[0][1]}. Scores on {other} are inflated: remove the copies "
            "from one folder."
            if n and ex
            else ""
        )
        out.append(
            Finding(
                "critical" if n else "ok",
                code,
                f"across folders, {what}: {n} group(s) ({k} file(s) of {other}){tail}",
            )
        )
    look = fl.get("lookalike", {})
    n = look.get("n_pairs", 0)
    eg = look.get("examples") or []
    out.append(
        Finding(
            "warning" if n else "ok",
            "folder_lookalikes",
            f"across folders, look-alike pairs: {n} (possibly the same patient or scan; a "
            "person decides)" + (f", e.g. {eg[0][0]} ~ {eg[0][1]}" if eg else ""),
        )
    )
    return out


def _verdict(rep: AuditReport) -> list[Finding]:
    out: list[Finding] = []
    kinds = Counter(p["kind"] for p in rep.problems)
    unread = sum(v for k, v in kinds.items() if k != "unsupported")
    if unread:
        detail = ", ".join(
            f"{v} {k.replace('_', ' ')}" for k, v in kinds.items() if k != "unsupported"
        )
        ex = next(p["path"] for p in rep.problems if p["kind"] != "unsupported")
        sev: Severity = "critical" if unread > 0.05 * max(1, rep.n_files) else "warning"
        out.append(
            Finding(
                sev,
                "unreadable",
                f"{unread} file(s) cannot be read ({detail}), e.g. {ex}; they will be skipped. "
                "Replace or delete them.",
            )
        )
    if kinds.get("unsupported"):
        out.append(
            Finding(
                "warning",
                "unsupported",
                f"{kinds['unsupported']} file(s) in the class folders have an unsupported type "
                "and are ignored (see problems). Move them out if they are not images.",
            )
        )
    out.extend(_copy_findings(rep))
    if rep.leakage is not None and not rep.leakage.ok:
        out.append(Finding("critical", "split_leakage", rep.leakage.message))
    if rep.folder_leakage is not None:
        out.extend(_folder_findings(rep))
    if rep.folder_leakage and rep.folder_leakage.get("patients_crossing"):
        out.append(
            Finding(
                "critical",
                "folder_patient_leakage",
                f"{len(rep.folder_leakage['patients_crossing'])} patient id(s) appear in both "
                "folders; keep each patient in one of them.",
            )
        )
    for a in rep.associations:
        if a.level == "ok" or a.same_as is not None:
            continue
        twins = [b.prop for b in rep.associations if b.same_as == a.prop]
        names = " / ".join(x.replace("_", " ") for x in [a.prop, *twins])
        spread = "; ".join(
            f"{c}: " + ", ".join(f"{n} {v}" for v, n in vals.items()) for c, vals in a.table.items()
        )
        together = f" ({' and '.join([a.prop, *twins])} vary together)" if twins else ""
        out.append(
            Finding(
                a.level,
                "shortcut_property",
                f"the {names} of the files lines up with the class{together} (Cramér's V "
                f"{a.cramers_v:.2f}, p={a.p_value:.2g}): {spread}. A model can learn it instead "
                "of the anatomy; convert all files to one form or balance it across classes.",
            )
        )
    p = rep.probe
    if p is not None and p.balanced_accuracy is not None and p.level != "ok":
        what = ", ".join(p.carriers) or "a mix of properties"
        content_only = bool(p.carriers) and set(p.carriers) <= set(CONTENT_FAMILIES)
        note = (
            " Intensity, border and (for one format and size) file size reflect the image content "
            "as well as the scanner or stain: check whether the classes come from different "
            "sources, devices or sessions."
            if content_only
            else " These properties say nothing about anatomy: the classes were acquired or "
            "stored differently, and a model can score well on that alone."
        )
        out.append(
            Finding(
                p.level,
                "shortcut_probe",
                f"SHORTCUT: a classifier that sees only file and acquisition properties predicts "
                f"the class with balanced accuracy {p.balanced_accuracy:.2f} (chance "
                f"{p.chance:.2f}, label-shuffled {p.shuffled_p95:.2f}, z = {p.z}); carried by "
                f"{what}.{note}",
            )
        )
    counts = [v for v in rep.class_counts.values() if v > 0]
    if counts and max(counts) / min(counts) > _IMBALANCE_RATIO:
        out.append(
            Finding(
                "warning",
                "class_imbalance",
                "classes are imbalanced ("
                + ", ".join(f"{c} {n}" for c, n in rep.class_counts.items())
                + "); report balanced metrics and "
                "consider class weights.",
            )
        )
    missing = [c for c, v in rep.class_counts.items() if v == 0]
    if missing:
        out.append(Finding("critical", "empty_class", f"no images for class(es) {missing}"))
    mism = sum(s.get("name_mismatch", 0) for s in rep.class_stats.values())
    if mism:
        out.append(
            Finding(
                "warning",
                "name_mismatch",
                f"{mism} file(s) have a name that does not match their content (e.g. PNG data "
                "named .jpg); medlens reads them by content, but other tools may not.",
            )
        )
    if rep.n_blank:
        out.append(
            Finding(
                "warning",
                "blank_images",
                f"{rep.n_blank} image(s) are blank (no structure); check that they belong.",
            )
        )
    if all(f.severity == "ok" for f in out):
        out.append(
            Finding(
                "ok",
                "clean",
                f"{rep.n_readable} images read; no copies, leakage or shortcut found.",
            )
        )
    out.sort(key=lambda f: -SEVERITY_RANK[f.severity])
    return out
