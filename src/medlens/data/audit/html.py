"""The audit's self-contained HTML page (inline CSS and thumbnails) and its JSON twin."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.audit.findings import TIERS, AuditError, AuditReport
from medlens.data.audit.records import _npz_image
from medlens.data.io import read_image
from medlens.errors import ImageReadError

_MAX_THUMB_GROUPS = 30  # groups (and look-alike pairs) drawn with thumbnails
_MAX_THUMBS = 6
_MAX_LISTED = 300  # groups listed at all; the JSON has every one
_MAX_PAIRS = 100  # look-alike pairs listed
JSON_NAME = "audit.json"
HTML_NAME = "audit.html"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.critical{color:#fff;background:#b00020}.warning{background:#ffd54f}
.ok{color:#fff;background:#2e7d32}.sev{padding:2px 6px;border-radius:3px;font-weight:600}
.bar{background:#5b8def;height:12px;display:inline-block}.mono{font-family:monospace}
.thumbs img{margin:2px;border:1px solid #ccc}.small{font-size:12px;color:#555}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _sev(level: str) -> str:
    return f"<span class='sev {level}'>{_esc(level)}</span>"


def _counts(d: dict[str, Any] | None) -> str:
    """``{"PNG": 30, "JPEG": 10}`` as "PNG 30, JPEG 10" (largest first), never a dict."""
    if not d:
        return "-"
    items = sorted(d.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return _esc(", ".join(f"{k or '?'} {v}" for k, v in items))


def _thumb_b64(path: str, side: int = 96) -> str | None:
    from PIL import Image

    try:
        if "::" in path:
            base, rest = path.split("::", 1)
            key, idx = rest[:-1].split("[")
            arr = _npz_image(base, key, int(idx)).array
        else:
            arr = read_image(path).array
    except (ImageReadError, OSError, ValueError):
        return None
    u8 = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    img = Image.fromarray(u8)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(path: str) -> str:
    b64 = _thumb_b64(path)
    return f"<img alt='' title='{_esc(path)}' src='data:image/png;base64,{b64}'>" if b64 else ""


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt_desc(d: dict[str, float] | None, digits: int = 3) -> str:
    if not d:
        return "-"
    lo, hi = f"{d['min']:.{digits}g}", f"{d['max']:.{digits}g}"
    return f"{d['mean']:.{digits}g} <span class=small>[{lo}, {hi}]</span>"


def _head(rep: AuditReport) -> list[str]:
    return [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>medlens audit</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>medlens data audit {_sev(rep.severity)}</h1>",
        f"<p class=mono>{_esc(rep.data_root)}"
        + (f" vs {_esc(rep.against_root)}" if rep.against_root else "")
        + f"</p><p>{rep.n_files} files, {rep.n_readable} readable, copy-candidate threshold "
        f"{rep.near_threshold}/128 bits, {rep.elapsed_s:.1f} s.</p>",
        "<h2>Verdict</h2>",
        _table([[_sev(f.severity), _esc(f.message)] for f in rep.verdict], ["severity", "finding"]),
    ]


def _classes(rep: AuditReport) -> list[str]:
    total = max(1, sum(rep.class_counts.values()))
    parts = [
        "<h2>Class balance</h2>",
        _table(
            [
                [_esc(c), n, f"<span class=bar style='width:{int(300 * n / total)}px'></span>"]
                for c, n in rep.class_counts.items()
            ],
            ["class", "images", ""],
        ),
        "<h2>Properties per class</h2>",
    ]
    rows = []
    for c, s in rep.class_stats.items():
        hist = s["mean_intensity_hist"]
        top = max(1, max(hist))
        spark = "".join(
            f"<span class=bar style='width:6px;height:{2 + int(20 * v / top)}px;"
            "vertical-align:bottom;margin-right:1px'></span>"
            for v in hist
        )
        rows.append(
            [
                _esc(c),
                s["count"],
                _fmt_desc(s["width"]),
                _fmt_desc(s["height"]),
                _counts(s["format"]),
                _counts(s["mode"]),
                _counts(s["bit_depth"]),
                _fmt_desc(s["file_size"]),
                _fmt_desc(s["mean_intensity"]) + "<br>" + spark,
                _counts(s["exposure"]),
                _fmt_desc(s["border_fraction"]),
                s["name_mismatch"],
            ]
        )
    parts.append(
        _table(
            rows,
            [
                "class",
                "n",
                "width",
                "height",
                "format",
                "mode",
                "bits",
                "bytes",
                "mean intensity (histogram 0..1)",
                "exposure",
                "border fraction",
                "name/content mismatch",
            ],
        )
    )
    rule = rep.exposure_rule
    if rule:
        parts.append(
            f"<p class=small>Exposure rule: <b>{_esc(rule.get('rule', ''))}</b>. "
            f"{_esc(rule.get('why', ''))}.</p>"
        )
    return parts


def _shortcuts(rep: AuditReport) -> list[str]:
    parts = ["<h2>Shortcuts</h2>"]
    if rep.associations:
        rows = []
        for a in rep.associations:
            spread = "<br>".join(f"{_esc(c)}: {_counts(vals)}" for c, vals in a.table.items())
            same = f" (same split of files as {_esc(a.same_as)})" if a.same_as else ""
            rows.append(
                [
                    _esc(a.prop) + same,
                    f"{a.cramers_v:.2f}",
                    f"{a.p_value:.2g}",
                    _sev(a.level),
                    spread,
                ]
            )
        parts.append(_table(rows, ["property", "Cramér's V", "p", "level", "values per class"]))
    p = rep.probe
    if p is None:
        return parts
    if p.balanced_accuracy is None:
        parts.append(f"<p>Probe skipped: {_esc(p.skipped)}</p>")
        return parts
    shuffled = ", ".join(f"{v:.3f}" for v in p.shuffled)
    parts.append(
        f"<p>Probe (random forest on {len(p.features)} non-anatomical features, "
        f"{p.n_folds}-fold, {p.n_rows} images): balanced accuracy "
        f"<b>{p.balanced_accuracy:.3f}</b>, chance {p.chance:.3f}, label-shuffled "
        f"{_esc(shuffled)} (95th percentile {p.shuffled_p95:.3f}), z = {p.z}. "
        f"{_sev(p.level)} Carriers: {_esc(', '.join(p.carriers) or 'none')}.</p>"
        "<p class=small>Critical: significant (above every shuffled run's 95th percentile and "
        "z &ge; 4) and &ge; chance + 0.25; warning: significant and &ge; chance + 0.15, or "
        "above the shuffled runs with z &ge; 3.</p>"
    )
    parts.append(
        _table(
            [
                [_esc(f), f"{p.single_family.get(f, 0):.3f}", f"{v:+.3f}"]
                for f, v in sorted(p.importance.items(), key=lambda t: -t[1])
            ],
            ["property family", "balanced accuracy alone", "permutation importance"],
        )
    )
    return parts


def _copies(rep: AuditReport) -> list[str]:
    tiers = rep.tiers()
    parts = [
        "<h2>Copies</h2>",
        "<p class=small><b>exact</b>: same bytes or pixels. <b>near-identical</b>: the same "
        "picture resized, re-encoded, re-exposed or mirrored (hashes close and fine detail "
        "agrees); kept in one split. <b>look-alike</b>: alike but not the same picture "
        "(possibly one patient or scan; a person decides); counted as pairs, never "
        "chained.</p>",
        _table(
            [
                [
                    _esc(t),
                    tiers[t]["within_folder"],
                    tiers[t]["across_folders"] if rep.against_root else "-",
                    tiers[t]["across_splits"] if rep.leakage is not None else "-",
                    tiers[t]["cross_class"],
                ]
                for t in TIERS
            ],
            [
                "tier (groups; look-alike: pairs)",
                "within the data",
                "across folders",
                "across splits",
                "with different labels",
            ],
        ),
    ]
    order = sorted(
        rep.groups,
        key=lambda g: (not g.cross_folder, not g.cross_split, not g.cross_class, -len(g.members)),
    )
    rows = []
    for n, g in enumerate(order[:_MAX_LISTED]):
        flags = [
            f
            for f, on in (
                ("across folders", g.cross_folder),
                ("across splits", g.cross_split),
                ("conflicting labels", g.cross_class),
            )
            if on
        ] or ["within one class"]
        thumbs = ""
        if n < _MAX_THUMB_GROUPS:
            thumbs = "".join(_img(m["path"]) for m in g.members[:_MAX_THUMBS])
        members = "<br>".join(
            f"<span class=mono>{_esc(m['key'])}</span> ({_esc(m['label'])}"
            + (f", {_esc(m['split'])}" if m["split"] else "")
            + (", other folder" if m["folder"] == "against" else "")
            + ")"
            for m in g.members[:20]
        )
        if len(g.members) > 20:
            members += f"<br>... {len(g.members) - 20} more"
        for c in g.conflicts[:5]:
            members += (
                f"<br><b>labels differ</b>: {_esc(c['a'])} ({_esc(c['label_a'])}) vs "
                f"{_esc(c['b'])} ({_esc(c['label_b'])}), {_esc(c['kind'])}, distance "
                f"{c['distance']}"
            )
        rows.append(
            [
                g.id,
                _esc(g.tier),
                _esc(", ".join(flags)),
                f"<div class=thumbs>{thumbs}</div>",
                members,
            ]
        )
    if rows:
        parts.append(_table(rows, ["group", "tier", "class / split", "thumbnails", "members"]))
    notes = []
    if len(order) > _MAX_THUMB_GROUPS:
        shown = min(len(order), _MAX_LISTED)
        notes.append(
            f"Thumbnails are drawn for the first {_MAX_THUMB_GROUPS} groups only: "
            f"{shown - _MAX_THUMB_GROUPS} group(s) above are listed without them."
        )
    if len(order) > _MAX_LISTED:
        notes.append(
            f"{len(order) - _MAX_LISTED} more group(s) are not listed on this page; every group "
            f"is in {JSON_NAME} (duplicates.groups)."
        )
    parts += [f"<p><b>{_esc(x)}</b></p>" for x in notes]
    parts += _lookalikes(rep)
    return parts


def _lookalikes(rep: AuditReport) -> list[str]:
    pairs = rep.lookalikes
    parts = [f"<h2>Look-alike pairs ({len(pairs)})</h2>"]
    if not pairs:
        return [*parts, "<p>none</p>"]
    rows = []
    for n, p in enumerate(pairs[:_MAX_PAIRS]):
        thumbs = _img(p["a"]) + _img(p["b"]) if n < _MAX_THUMB_GROUPS else ""

        def side(p: dict[str, Any], k: str) -> str:
            where = [str(p[f"label_{k}"])]
            if p[f"split_{k}"]:
                where.append(str(p[f"split_{k}"]))
            if p[f"folder_{k}"] == "against":
                where.append("other folder")
            return f"<span class=mono>{_esc(p[f'key_{k}'])}</span> ({_esc(', '.join(where))})"

        rows.append(
            [
                f"<div class=thumbs>{thumbs}</div>",
                side(p, "a") + "<br>" + side(p, "b"),
                p["distance"],
                f"{p['detail']:.2f}",
            ]
        )
    parts.append(_table(rows, ["thumbnails", "pair", "hash distance", "detail correlation"]))
    left = []
    if len(pairs) > _MAX_THUMB_GROUPS:
        left.append(
            f"thumbnails for the first {_MAX_THUMB_GROUPS} pairs only "
            f"({min(len(pairs), _MAX_PAIRS) - _MAX_THUMB_GROUPS} listed without them)"
        )
    if len(pairs) > _MAX_PAIRS:
        left.append(
            f"{len(pairs) - _MAX_PAIRS} more pair(s) not listed here; all are in {JSON_NAME} "
            "(duplicates.lookalike_pairs)"
        )
    if left:
        parts.append(f"<p><b>{_esc('; '.join(left))}.</b></p>")
    return parts


def _leakage(rep: AuditReport) -> list[str]:
    parts: list[str] = []
    if rep.leakage is not None:
        lk = rep.leakage
        parts += ["<h2>Split leakage</h2>", f"<p>{_esc(lk.message)}</p>"]
        if lk.examples:
            parts.append(
                _table([[_esc(x) for x in ex[:2]] for ex in lk.examples], ["one", "other"])
            )
        if lk.n_lookalike_pairs_crossing:
            parts.append(
                f"<p>{lk.n_lookalike_pairs_crossing} look-alike pair(s) sit in two splits "
                "(not counted as leakage; a person decides).</p>"
            )
    fl = rep.folder_leakage
    if fl is not None:
        parts.append("<h2>Folder leakage</h2>")
        parts.append(
            _table(
                [
                    ["exact", fl["exact"]["n_groups"], fl["exact"]["n_against_images"]],
                    [
                        "near-identical",
                        fl["near_identical"]["n_groups"],
                        fl["near_identical"]["n_against_images"],
                    ],
                    ["look-alike (pairs)", fl["lookalike"]["n_pairs"], "-"],
                ],
                ["tier", "groups across folders", f"files of {rep.against_root}"],
            )
        )
        if fl["examples"]:
            parts.append(
                _table(
                    [[f"<span class=mono>{_esc(a)}</span>" for a in ex] for ex in fl["examples"]],
                    ["this folder", "other folder"],
                )
            )
        if fl["patients_crossing"]:
            ids = ", ".join(fl["patients_crossing"][:20])
            parts.append(f"<p>patient ids in both folders: {_esc(ids)}</p>")
    return parts


def _problems(rep: AuditReport) -> list[str]:
    parts = ["<h2>Unreadable and unsupported files</h2>"]
    if not rep.problems:
        return [*parts, "<p>none</p>"]
    parts.append(
        _table(
            [
                [_esc(x["kind"]), f"<span class=mono>{_esc(x['path'])}</span>", _esc(x["reason"])]
                for x in rep.problems[:_MAX_LISTED]
            ],
            ["kind", "file", "reason"],
        )
    )
    if len(rep.problems) > _MAX_LISTED:
        parts.append(
            f"<p><b>{len(rep.problems) - _MAX_LISTED} more file(s) are listed in {JSON_NAME} "
            "(problems.files).</b></p>"
        )
    return parts


def render_html(rep: AuditReport) -> str:
    """The whole page: verdict, classes, shortcuts, copies by tier, leakage, problems."""
    parts = [
        *_head(rep),
        *_classes(rep),
        *_shortcuts(rep),
        *_copies(rep),
        *_leakage(rep),
        *_problems(rep),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_audit(report: AuditReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``audit.html`` (self-contained: inline CSS and thumbnails) and ``audit.json``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / JSON_NAME
        html_path = out / HTML_NAME
        json_path.write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
        html_path.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise AuditError(
            f"cannot write the audit report to {out}: {exc.strerror or exc}. Choose a writable "
            "output folder."
        ) from exc
    return html_path, json_path
