"""Report sections beyond one test split: internal vs external, dataset shift, subgroups,
conformal coverage, input-gate outcomes and local recalibration. Each takes the run's (or the
external evaluation's) ``metrics`` and returns HTML ("" when the metrics hold no such section);
:mod:`medlens.evaluate.report` places them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from medlens.evaluate.intervals import fmt_ci


def num(v: Any, digits: int = 3) -> str:
    ok = isinstance(v, int | float) and math.isfinite(v)
    return f"{v:.{digits}f}" if ok else "n/a"


def table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    th = "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _diff(d: dict[str, Any]) -> str:
    if d.get("value") is None:
        return "n/a"
    if d.get("ci_low") is None:
        return f"{d['value']:+.3f}"
    return f"{d['value']:+.3f} [{d['ci_low']:+.3f} to {d['ci_high']:+.3f}]"


def external_warnings(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Warnings for the box at the top: a model that does not transfer, flagged subgroups."""
    from medlens.evaluate.subgroups import flagged_texts

    out = []
    ext = metrics.get("external") or {}
    if ext.get("transfers") is False:
        out.append({"code": "does_not_transfer", "message": ext["verdict"]})
    sub = metrics.get("subgroups") or {}
    for text in flagged_texts(sub):
        out.append({"code": "subgroup_below", "message": f"Subgroup below overall: {text}."})
    return out


def external_html(metrics: dict[str, Any]) -> str:
    ext = metrics.get("external")
    if not ext:
        return ""
    parts = ["<h2>Internal vs external</h2>"]
    cls = "alert" if ext.get("transfers") is False else "note"
    parts.append(f"<p class='{cls}'><strong>{html.escape(ext['verdict'])}</strong></p>")
    rows = [
        [
            html.escape(r["name"]),
            fmt_ci(r["internal"]),
            fmt_ci(r["external"]),
            _diff(r["difference"]),
            html.escape(r["status"]),
        ]
        for r in ext.get("rows", [])
    ]
    if rows:
        parts.append(
            table(
                [
                    "figure",
                    f"bundle's own test (n={ext.get('internal_n', '?')})",
                    f"new data (n={ext.get('n', '?')})",
                    "internal − external",
                    "",
                ],
                rows,
            )
        )
    parts.append(f"<p>{html.escape(ext.get('method', ''))}. Data: {html.escape(ext['data'])}.</p>")
    return "\n".join(parts)


def shift_html(metrics: dict[str, Any]) -> str:
    sh = metrics.get("shift")
    if not sh:
        return ""
    parts = ["<h2>Shift: the new images against the training images</h2>"]
    if sh.get("reference") is None:
        parts.append(f"<p class='note'>{html.escape(sh.get('note', 'no reference'))}</p>")
    else:
        shifted = sh.get("shifted_properties") or []
        parts.append(
            f"<p>Reference: {html.escape(sh['reference'])}. "
            f"<strong>{100 * sh['share_flagged']:.1f} %</strong> of the {sh['n']} new images lie "
            f"outside the training range of acquisition properties (threshold "
            f"{num(sh['acquisition_threshold'], 2)} robust SD). Shifted properties: "
            f"{html.escape(', '.join(shifted) or 'none')}.</p>"
        )
        rows = [
            [
                r["property"],
                num(r["reference_median"]),
                num(r["new_median"]),
                num(r["standardised_difference"], 2),
                f"{r['p_holm']:.2g}" if isinstance(r.get("p_holm"), float) else "n/a",
                "<strong>shifted</strong>" if r["shifted"] else "",
            ]
            for r in sh["properties"]
        ]
        parts.append(
            table(
                ["property", "training median", "new median", "std. difference", "p (Holm)", ""],
                rows,
            )
        )
        first = sh["properties"][0]
        parts.append(
            f"<p>{html.escape(first['difference_kind'])}; test: {html.escape(first['test'])}. "
            f"{html.escape(sh['rule'])}.</p>"
        )
    facts = sh.get("facts") or {}
    rows = []
    for key, f in facts.items():
        new = ", ".join(f"{k} ({v})" for k, v in f["new"].items())
        ref = ", ".join(f"{k} ({v})" for k, v in (f.get("reference") or {}).items()) or "—"
        unseen = f.get("share_unseen")
        rows.append(
            [
                key,
                html.escape(ref),
                html.escape(new),
                "—" if unseen is None else f"{100 * unseen:.0f} %",
            ]
        )
    if rows:
        parts.append(table(["fact", "training", "new data", "new values unseen in training"], rows))
    parts.append(gate_html(sh.get("gate"), "the new images"))
    return "\n".join(parts)


def gate_html(gate: dict[str, Any] | None, what: str = "the test images") -> str:
    if not gate:
        return "<p class='note'>The bundle has no input gate: out-of-distribution images are not refused.</p>"
    counts = ", ".join(f"{k}: {v}" for k, v in gate.get("status_counts", {}).items())
    extra = ""
    if gate.get("feature_score_median") is not None:
        extra = (
            f" Median feature score {num(gate['feature_score_median'])} against the gate's "
            f"threshold {num(gate.get('feature_threshold'))}."
        )
    if gate.get("accuracy_passed") is not None:
        extra += (
            f" Accuracy (most probable class) on the images that pass "
            f"{num(gate['accuracy_passed'])}, on all {num(gate.get('accuracy_all'))}."
        )
    share = gate.get("share_flagged")
    share_s = "n/a" if share is None else f"{100 * share:.1f} %"
    return (
        f"<p>Input gate on {what}: <strong>{share_s}</strong> not "
        f"assessed ({html.escape(counts)}).{extra}</p>"
    )


def subgroups_html(metrics: dict[str, Any]) -> str:
    sub = metrics.get("subgroups")
    if not sub:
        return ""
    from medlens.evaluate import figures as F

    keys = list(sub["overall"])
    parts = [f"<h2>Subgroups by {html.escape(sub['column'])}</h2>"]
    rows = [["<strong>all</strong>", "", *[fmt_ci(sub["overall"][k]) for k in keys], ""]]
    for value, g in sub["groups"].items():
        flag = ", ".join(F.display_name(k) for k in g["below_overall"])
        rows.append(
            [
                html.escape(value),
                str(g["n"]),
                *[fmt_ci(g["figures"][k]) for k in keys],
                f"<strong>below overall: {html.escape(flag)}</strong>"
                if flag
                else html.escape(g.get("note", "")),
            ]
        )
    parts.append(table(["subgroup", "n", *[F.display_name(k) for k in keys], ""], rows))
    parts.append(f"<p>{html.escape(sub['rule'])}.</p>")
    return "\n".join(parts)


def conformal_html(metrics: dict[str, Any]) -> str:
    c = ((metrics.get("trust") or {}).get("conformal") or {}).get("test")
    if not c:
        return ""
    target = c.get("target")
    parts = ["<h2>Conformal prediction sets</h2>"]
    rows = [
        ["marginal coverage", fmt_ci(c["marginal_coverage"])],
        *[
            [f"coverage, {html.escape(k)} (n={v['n']})", fmt_ci(v)]
            for k, v in c["per_class_coverage"].items()
        ],
        ["mean set size", fmt_ci(c["mean_set_size"])],
        ["single-class sets", fmt_ci(c["single_class_share"])],
        ["accuracy on single-class sets", fmt_ci(c["accuracy_single_class"])],
        ["accuracy on all cases (argmax)", fmt_ci(c.get("accuracy_all"))],
    ]
    parts.append(table(["figure", "value [95 % CI]"], rows))
    below = c.get("classes_below_target") or []
    if target is not None:
        parts.append(
            f"<p>Target coverage {100 * target:.0f} % per class. Classes whose whole interval "
            f"lies below it: {html.escape(', '.join(below) or 'none')}.</p>"
        )
    return "\n".join(parts)


def recalibration_html(metrics: dict[str, Any]) -> str:
    r = metrics.get("recalibration")
    if not r:
        return ""
    before = r["as_shipped"]["calibration"]["test_after"]
    parts = ["<h2>Local recalibration</h2>"]
    frac = "" if r.get("fraction") is None else f" ({100 * r['fraction']:.0f} % of the new data)"
    parts.append(
        f"<p>Refitted ({html.escape(', '.join(r['refitted']))}) on {r['n_calibration']} images "
        f"of {html.escape(r['data'])}{frac}, {html.escape(r['how'])}; every figure above is on "
        f"the other {r['n_reported']} images. Temperature {num(r['temperature_before'])} → "
        f"{num(r['temperature_after'])}. ECE as shipped {num(before['ece'])}, after "
        f"recalibration {num(metrics['calibration']['test_after']['ece'])}. The new bundle "
        "records this in recalibration.json.</p>"
    )
    pol = r["as_shipped"].get("policy")
    if pol and "policy" in metrics:
        rows = []
        for c, row in metrics["policy"]["test"]["per_class"].items():
            old = pol["test"]["per_class"][c]["policy"]
            rows.append(
                [
                    c,
                    num(old["sensitivity"]),
                    num(row["policy"]["sensitivity"]),
                    num(old["specificity"]),
                    num(row["policy"]["specificity"]),
                ]
            )
        parts.append(
            table(
                [
                    "class",
                    "sens. as shipped",
                    "sens. recalibrated",
                    "spec. as shipped",
                    "spec. recalibrated",
                ],
                rows,
            )
        )
    return "\n".join(parts)
