"""The explanation section of the evaluation report: scores with intervals beside baselines,
faithfulness flags, and example overlays including the worst-localised ones.

The section only shows figures it is given (from :func:`~medlens.explain.images.
evaluate_explanations`, :class:`~medlens.explain.scores.LocalisationScorer` or the records of
:func:`~medlens.explain.images.explain_images`); it computes nothing of its own, so it cannot
print a localisation figure nobody measured. Overlays are embedded as base64 PNGs so the report
stays one self-contained file.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlens.evaluate.intervals import fmt_ci
from medlens.explain.scores import BASELINES, METRICS, RANDOM

__all__ = [
    "NO_EVIDENCE",
    "evidence_line",
    "explanation_section_html",
    "heatmap_verdicts",
]

NO_EVIDENCE = (
    "No localisation evidence for this model: its heatmaps were never checked against lesion masks."
)
VERDICTS = (
    "points at the lesion more than random",
    "no better than random",
    "worse than random",
)

_LABELS = {
    "pointing_game": "Pointing game",
    "energy_in_mask": "Energy in mask",
    "topk_iou": "Top-k IoU",
}

_NOTE = (
    "A heatmap shows where the features that raised the explained class's score are strongest; "
    "it is not a lesion outline. Methods are scored against ground-truth lesion masks and against "
    "two baselines that never look at the image (smooth random noise, a centred Gaussian); a "
    "method is credited only when the 95 % interval of its paired difference from a baseline "
    "lies above zero."
)


def _fmt(m: dict[str, Any] | None, signed: bool = False) -> str:
    if not signed:
        return fmt_ci(m)
    if not m or m.get("value") is None:
        return "n/a"
    v, lo, hi = m["value"], m.get("ci_low"), m.get("ci_high")
    f = "+.3f"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:{f}}"
    return f"{v:{f}} [{lo:{f}}, {hi:{f}}]"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    th = "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _skipped(res: dict[str, Any]) -> str:
    sk = res.get("skipped") or {}
    return html.escape(", ".join(f"{k}: {v}" for k, v in sorted(sk.items())) or "0")


def _localisation_html(loc: dict[str, Any]) -> str:
    methods: dict[str, Any] = loc.get("methods", {})
    metrics = [m for m in loc.get("metrics", METRICS) if m in _LABELS]
    k = loc.get("top_fraction")
    labels = {**_LABELS, "topk_iou": f"Top-{k:.0%} IoU" if k else "Top-k IoU"}
    order = [m for m in methods if m not in BASELINES] + [b for b in BASELINES if b in methods]
    rows = []
    for m in order:
        res = methods[m]
        name = html.escape(m) + (" <em>(baseline)</em>" if m in BASELINES else "")
        rows.append(
            [name, *[_fmt(res.get(mt)) for mt in metrics], str(res.get("n", 0)), _skipped(res)]
        )
    parts = ["<h3>Localisation against lesion masks</h3>"]
    if (frac := loc.get("mean_mask_fraction")) is not None:
        parts.append(
            f"<p>Lesions cover {frac:.1%} of the image on average: the energy in mask a uniform "
            "heatmap would reach.</p>"
        )
    parts.append(_table(["Method", *[labels[mt] for mt in metrics], "Images", "Skipped"], rows))
    cmp_rows = []
    for m in order:
        for b, cmp in (methods[m].get("vs_baselines") or {}).items():
            verdicts = []
            for mt in metrics:
                d = cmp.get(mt) or {}
                if d.get("better"):
                    verdicts.append(f"{labels[mt]}: better")
                elif d.get("worse"):
                    verdicts.append(f"{labels[mt]}: worse")
                elif d.get("better") is False:
                    verdicts.append(f"{labels[mt]}: not distinguishable")
            cmp_rows.append(
                [
                    f"{html.escape(m)} − {html.escape(b)}",
                    *[_fmt(cmp.get(mt), signed=True) for mt in metrics],
                    html.escape("; ".join(verdicts) or "n/a"),
                ]
            )
    if cmp_rows:
        parts.append(
            _table(
                ["Paired difference", *[labels[mt] for mt in metrics], "Verdict"],
                cmp_rows,
            )
        )
    return "".join(parts)


def _faithfulness_html(faith: dict[str, Any]) -> str:
    rows = []
    for m, res in faith.get("methods", {}).items():
        if m in BASELINES:
            rows.append(
                [f"{html.escape(m)} <em>(baseline)</em>", _fmt(res.get("road")), "", "", ""]
            )
            continue
        d = (res.get("vs_baselines") or {}).get(faith.get("baseline", ""), {}).get("road")
        flag = res.get("faithful")
        shown = "yes" if flag else ("<strong>no</strong>" if flag is False else "n/a")
        rows.append(
            [
                html.escape(m),
                _fmt(res.get("road")),
                _fmt(d, signed=True),
                shown,
                html.escape(res.get("reason", "")),
            ]
        )
    pct = ", ".join(str(p) for p in faith.get("percentiles", []))
    return (
        "<h3>Faithfulness (ROAD)</h3>"
        f"<p class='note'>{html.escape(faith.get('metric', 'ROAD'))}; removal percentiles {pct}. "
        "Higher means removing what the heatmap marks hurts the prediction more than removing "
        "what it leaves out.</p>"
        + _table(["Method", "ROAD", "− random heatmap", "Faithful", "Reason"], rows)
    )


def _figure(rec: Any, tag: str = "") -> str:
    get = rec.get if isinstance(rec, dict) else lambda k, d=None: getattr(rec, k, d)
    png = get("png")
    try:
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii") if png else None
    except OSError:
        data = None
    img = (
        f'<img src="data:image/png;base64,{data}" alt="heatmap overlay" width="160">'
        if data
        else "<span>(overlay unavailable)</span>"
    )
    cap = [html.escape(Path(str(get("path", ""))).name)]
    if get("predicted") is not None:
        cap.append(
            f"predicted {html.escape(str(get('predicted')))} ({get('probability') or 0:.2f}); "
            f"{html.escape(str(get('method')))} of {html.escape(str(get('explained_class')))}"
        )
    sc = get("scores")
    if sc:
        cap.append(
            f"pointing {sc['pointing_game']:.2f}, energy {sc['energy_in_mask']:.2f}, "
            f"IoU {sc['topk_iou']:.2f}"
        )
    if tag:
        cap.append(f"<strong>{html.escape(tag)}</strong>")
    return (
        "<figure style='margin:0;width:170px;font-size:0.8em'>"
        f"{img}<figcaption>{'<br>'.join(cap)}</figcaption></figure>"
    )


def _grid(figs: list[str]) -> str:
    return "<div style='display:flex;flex-wrap:wrap;gap:8px'>" + "".join(figs) + "</div>"


def explanation_section_html(
    records: Sequence[Any] | None = None,
    summary: dict[str, Any] | None = None,
    *,
    title: str = "Explanations",
    n_examples: int = 6,
    n_worst: int = 4,
) -> str:
    """An HTML fragment (``<section>``) for the evaluation report.

    ``records``: :class:`~medlens.explain.images.ExplanationRecord` objects (or their dicts) with
    overlay PNGs. ``summary``: the dict of :func:`~medlens.explain.images.evaluate_explanations`
    (``localisation`` + ``faithfulness``) or a bare localisation summary; when omitted and the
    records hold scores, the records' own summary is used. Examples show the first
    ``n_examples`` explained images and, separately labelled, the ``n_worst`` with the lowest
    energy in the lesion mask.
    """
    from medlens.explain.images import ExplanationRecord, localisation_summary

    recs = list(records or [])
    loc = faith = None
    if summary is not None:
        loc = summary.get("localisation", summary if "metrics" in summary else None)
        faith = summary.get("faithfulness")
    elif (
        recs and all(isinstance(r, ExplanationRecord) for r in recs) and any(r.scores for r in recs)
    ):
        loc = localisation_summary(recs)
    parts = [
        f"<section class='explanations'><h2>{html.escape(title)}</h2>",
        f"<p class='note'>{html.escape(_NOTE)}</p>",
    ]
    if loc and loc.get("methods"):
        parts.append(_localisation_html(loc))
    else:
        parts.append("<p>No lesion masks were given: localisation was not measured.</p>")
    if faith and faith.get("methods"):
        parts.append(_faithfulness_html(faith))

    def get(r: Any, k: str) -> Any:
        return r.get(k) if isinstance(r, dict) else getattr(r, k, None)

    shown = [r for r in recs if get(r, "png")]
    if shown:
        parts.append("<h3>Examples</h3>" + _grid([_figure(r) for r in shown[:n_examples]]))
        scored = [r for r in shown if get(r, "scores")]
        worst = sorted(scored, key=lambda r: get(r, "scores")["energy_in_mask"])[:n_worst]
        if worst:
            parts.append(
                "<h3>Worst-localised</h3>"
                + _grid([_figure(r, "lowest energy in mask") for r in worst])
            )
    failed = [r for r in recs if get(r, "error")]
    if failed:
        items = "".join(
            f"<li>{html.escape(str(get(r, 'path')))}: {html.escape(str(get(r, 'error')))}</li>"
            for r in failed
        )
        parts.append(f"<p>Images that could not be explained:</p><ul>{items}</ul>")
    parts.append("</section>")
    return "".join(parts)


def _verdict(cmp: dict[str, Any]) -> str | None:
    """One method's verdict from its paired differences against the random heatmap.

    A metric counts only when its interval lies wholly above (better) or below (worse) zero.
    Better on some metric and worse on none: "points at the lesion more than random"; worse on
    some and better on none: "worse than random"; anything else, including a mix: "no better
    than random". None when no metric could be compared.
    """
    better = [m for m in METRICS if (cmp.get(m) or {}).get("better")]
    worse = [m for m in METRICS if (cmp.get(m) or {}).get("worse")]
    if not any((cmp.get(m) or {}).get("better") is not None for m in METRICS):
        return None
    if better and not worse:
        return VERDICTS[0]
    if worse and not better:
        return VERDICTS[2]
    return VERDICTS[1]


def heatmap_verdicts(summary: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{method: {"verdict", "line", "n", "faithful"}}`` from a run's explanation summary
    (``explanations.json``: ``localisation`` + ``faithfulness``); {} when nothing was scored.

    The one rule that turns localisation scores into the sentence shown beside every heatmap
    (result page, PDF, ``medlens explain``), so no channel words it differently.
    """
    if not summary:
        return {}
    loc = summary.get("localisation", summary if "metrics" in summary else None) or {}
    faith = (summary.get("faithfulness") or {}).get("methods") or {}
    out: dict[str, dict[str, Any]] = {}
    for m, res in (loc.get("methods") or {}).items():
        if m in BASELINES:
            continue
        verdict = _verdict((res.get("vs_baselines") or {}).get(RANDOM) or {})
        if verdict is None:
            continue
        pg, rnd = res.get("pointing_game") or {}, (loc["methods"].get(RANDOM) or {})
        pg_r = rnd.get("pointing_game") or {}
        n = int(res.get("n", 0))
        line = f"Heatmap evidence ({m}): {verdict} on {n} test images with lesion masks"
        if isinstance(pg.get("value"), int | float) and isinstance(pg_r.get("value"), int | float):
            line += (
                f" (hits the lesion {pg['value']:.0%} of the time vs {pg_r['value']:.0%} "
                "for random noise)"
            )
        f = faith.get(m) or {}
        if f.get("faithful") is True:
            line += "; removing what it marks changes the prediction (faithful)"
        elif f.get("faithful") is False:
            line += "; not shown to be faithful to the model"
        out[m] = {"verdict": verdict, "line": line + ".", "n": n, "faithful": f.get("faithful")}
    return out


def evidence_line(verdicts: dict[str, dict[str, Any]] | None, method: str) -> str:
    """The one line of evidence shown beside a heatmap of ``method``.

    A method the run did not score borrows nothing from another: it says no evidence exists.
    """
    if not verdicts:
        return NO_EVIDENCE
    v = verdicts.get(method)
    if v is None:
        scored = ", ".join(sorted(verdicts))
        return f"No localisation evidence for {method} on this model (scored: {scored})."
    return str(v["line"])
