"""The evaluation report: one self-contained HTML file (plots embedded) beside the same numbers
as JSON. ``medlens report RUN_DIR`` regenerates it from the files a run wrote, so the report can
never show a figure the run did not compute.

Figure names come from the one table (:mod:`medlens.evaluate.figures`), warnings from
:mod:`medlens.evaluate.caveats` (shown first, above every figure), pictures from
:mod:`medlens.evaluate.plots`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError
from medlens.evaluate import figures as F
from medlens.evaluate import plots
from medlens.evaluate.calibration import softmax
from medlens.evaluate.caveats import model_warnings
from medlens.evaluate.heldout import Scores
from medlens.evaluate.intervals import EXACT, fmt_ci
from medlens.evaluate.policy import DecisionPolicy
from medlens.evaluate.report_sections import (
    conformal_html,
    external_html,
    external_warnings,
    gate_html,
    recalibration_html,
    shift_html,
    subgroups_html,
)
from medlens.evaluate.report_sections import num as _num
from medlens.evaluate.report_sections import table as _table
from medlens.evaluate.shortcut_section import shortcut_html
from medlens.evaluate.worklists import TITLES, WorklistEntry, build_worklists, with_trust_groups

DISCLAIMER = (
    "Research and decision support only. These figures describe held-out data; they are not a "
    "diagnosis. A clinician reviews every image and decides."
)


def _ci(m: dict[str, Any] | None) -> str:
    return fmt_ci(m)


def _warnings_html(warnings: list[dict[str, Any]]) -> str:
    """The warnings box at the top of the report (nothing when there is nothing to say)."""
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w['message'])}</li>" for w in warnings)
    return (
        "<section class='alert' role='alert' aria-labelledby='warn-h'><h2 id='warn-h'>"
        f"Read this first: {len(warnings)} warning(s) about this model</h2><ul>{items}</ul>"
        "</section>"
    )


def _exact_note(iv: dict[str, Any]) -> str:
    """Say so when some figure is all-or-nothing on the test split."""
    packs = list(iv["overall"].values()) + [
        m for pc in iv["per_class"].values() for m in pc.values() if isinstance(m, dict)
    ]
    if not any(m.get("interval") == EXACT for m in packs):
        return ""
    return (
        "<p class='note'>Some proportions are all-or-nothing on the test split (every case right, "
        "or every case wrong): a bootstrap cannot give them an interval, so they show an exact "
        "one-sided Clopper–Pearson bound and the number of cases it rests on.</p>"
    )


def _target_met(target: float | None, sensitivity: Any) -> str:
    """Whether the policy met a class's sensitivity target on these data."""
    if target is None:
        return "—"
    if not (isinstance(sensitivity, int | float) and math.isfinite(sensitivity)):
        return "n/a"
    return "met" if sensitivity >= target else "<strong>missed</strong>"


def _worklist_html(
    worklists: dict[str, list[WorklistEntry]], classes: Sequence[str], limit: int = 12
) -> str:
    titles = {
        "missed_positive": "Missed positives (priority class decided as non-priority)",
        "borderline": "Borderline cases (near a threshold that can fire)",
        "confident_wrong": "Confident but wrong",
    }
    parts = []
    for key, entries in worklists.items():
        parts.append(f"<h3>{titles.get(key) or TITLES[key]} — {len(entries)} case(s)</h3>")
        if not entries:
            parts.append("<p>None on the test split.</p>")
            continue
        rows = [
            [
                plots.thumb(e.source),
                html.escape(Path(e.source.split("::")[0]).name),
                e.true,
                e.decision,
                " ".join(f"{c}={e.probabilities[c]:.2f}" for c in classes),
                html.escape(e.reason),
            ]
            for e in entries[:limit]
        ]
        parts.append(
            _table(["image", "file", "true", "decided", "probabilities", "why listed"], rows)
        )
        if len(entries) > limit:
            parts.append(f"<p>{len(entries) - limit} more in worklists.csv.</p>")
    return "\n".join(parts)


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}.warn{background:#fff3cd;
padding:0.6em;border-left:4px solid #d39e00}.note{background:#eef;padding:0.6em}
.alert{background:#fdecea;border:2px solid #b71c1c;padding:0.4em 1em;margin:1em 0}
.alert h2{color:#b71c1c;border:none;margin:0.3em 0}
img{max-width:100%}h2{border-bottom:2px solid #ddd;padding-bottom:4px}
"""


def _other_outputs_html(metrics: dict[str, Any], meta: dict[str, Any]) -> str:
    """Held-out figures beyond the class head: ensemble members, extra heads, segmentation."""
    parts: list[str] = []
    training = meta.get("training", {})
    if "members" in metrics:
        parts.append("<h2>Ensemble members (test)</h2>")
        parts.append(
            f"<p>Soft voting: the ensemble's probability is the weighted mean of its members'. "
            f"Weights: {html.escape(str(training.get('weights_from', 'recipe')))}. Each member "
            "was trained on the same split; these are its own test figures.</p>"
        )
        rows = [
            [
                html.escape(label),
                _num(m.get("weight")),
                _ci(m["macro_f1"]),
                _ci(m["balanced_accuracy"]),
                _ci(m["macro_roc_auc"]),
            ]
            for label, m in metrics["members"].items()
        ]
        ov = metrics["intervals"]["overall"]
        rows.append(
            [
                "<strong>ensemble</strong>",
                "1",
                _ci(ov["macro_f1"]),
                _ci(ov["balanced_accuracy"]),
                _ci(ov["macro_roc_auc"]),
            ]
        )
        parts.append(
            _table(["member", "weight", "macro-F1", "balanced accuracy", "macro ROC-AUC"], rows)
        )
    for name, h in (metrics.get("heads") or {}).items():
        parts.append(f"<h2>Head: {html.escape(name)} (test)</h2>")
        if h.get("type") == "regression":
            parts.append(
                _table(
                    ["figure", "value [95 % CI]"],
                    [
                        ["mean absolute error", _ci(h["mae"])],
                        ["Pearson r", _ci(h["pearson_r"])],
                        ["cases with a known target", str(h["n"])],
                    ],
                )
            )
        elif "overall" in h:
            rows = [
                ["accuracy", _ci(h["overall"]["accuracy"])],
                ["balanced accuracy", _ci(h["overall"]["balanced_accuracy"])],
                ["macro-F1", _ci(h["overall"]["macro_f1"])],
                [F.display_name("kappa", h), _ci(h["overall"]["kappa"])],
                ["cases with a known target", str(h["n"])],
            ]
            parts.append(_table(["figure", "value [95 % CI]"], rows))
        else:
            parts.append(f"<p>Not scored: {html.escape(str(h.get('skipped', '')))}.</p>")
    if "segmentation" in metrics:
        sm = metrics["segmentation"]
        seg_train = training.get("segmentation", {})
        parts.append("<h2>Segmentation of the region of interest (test)</h2>")
        parts.append(
            _table(
                ["figure", "value [95 % CI]"],
                [
                    ["Dice (mean over images)", _ci(sm["dice"])],
                    ["IoU (mean over images)", _ci(sm["iou"])],
                    ["test images with a mask", str(sm["n"])],
                    ["best validation Dice (checkpoint choice)", _num(seg_train.get("val_dice"))],
                ],
            )
        )
        parts.append(
            "<p>The classifier reads the image gated to the predicted region; heat maps are "
            "focused on it.</p>"
        )
    return "\n".join(parts)


def _data_row(metrics: dict[str, Any]) -> list[str]:
    if metrics.get("split") != "external":
        return [
            "test split",
            f"{metrics['n']} held-out images, never used for fitting, calibration or thresholds",
        ]
    rec = metrics.get("recalibration")
    what = (
        f"{metrics['n']} images of the new data not used for recalibration"
        if rec
        else f"{metrics['n']} images, none used for fitting, calibration or thresholds"
    )
    return ["new data", html.escape(f"{what} ({metrics['external']['data']})")]


def figure_tables_html(iv: dict[str, Any], classes: Sequence[str], where: str = "test") -> str:
    """The overall and per-class tables: one row (or column) per figure of the table in
    :mod:`medlens.evaluate.figures` that the run computed, named as the table names it."""
    parts: list[str] = []
    parts.append(f"<h2>Overall ({where}, calibrated probabilities, argmax)</h2>")
    parts.append(
        _table(
            ["figure", "value [95 % CI]"],
            [
                [html.escape(F.display_name(f, iv)), _ci(iv["overall"].get(f.key))]
                for f in F.overall()
                if f.key in iv["overall"]
            ],
        )
    )
    parts.append(f"<h2>Per class ({where})</h2>")
    cols = [f for f in F.per_class() if f.key in iv["per_class"][classes[0]]] if classes else []
    rows = [
        [c, str(iv["per_class"][c]["support"])] + [_ci(iv["per_class"][c].get(f.key)) for f in cols]
        for c in classes
    ]
    parts.append(_table(["class", "n"] + [F.display_name(f, iv) for f in cols], rows))
    parts.append(_exact_note(iv))
    return "\n".join(parts)


def render_report(run_dir: str | Path, bundle_dir: str | Path | None = None) -> Path:
    """Write ``report.html`` (and ``report.json``) for a run folder written by ``medlens train``,
    or for an external evaluation's folder (``bundle_dir``: the bundle evaluated; its metrics
    say ``split: external``). ``val_scores.csv`` is optional (the threshold sweep needs it)."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise MedlensError(
            f"{run_dir} holds no metrics.json: give a run folder written by `medlens train`"
        )
    metrics = json.loads(metrics_file.read_text())
    bdir = Path(bundle_dir) if bundle_dir is not None else run_dir / "bundle"
    meta = json.loads((bdir / "bundle.json").read_text())
    classes = list(meta["classes"])
    external = metrics.get("split") == "external"
    where = "new data" if external else "test"
    test = Scores.read_csv(run_dir / "test_scores.csv", classes)
    val_file = run_dir / "val_scores.csv"
    val = Scores.read_csv(val_file, classes) if val_file.is_file() else None
    cal = metrics.get("calibration", {})
    t = float(cal.get("temperature", 1.0))
    p_cal = softmax(test.logits, t)
    policy = DecisionPolicy.from_dict(metrics["policy"]) if "policy" in metrics else None
    recipe_eval = metrics.get("settings", {})
    worklists = build_worklists(
        test.sources,
        test.y,
        p_cal,
        policy,
        classes,
        recipe_eval.get("borderline_margin", 0.05),
        recipe_eval.get("confident_wrong", 0.95),
    )
    worklists = with_trust_groups(worklists, run_dir / "test_predictions.csv", classes)
    iv = metrics["intervals"]
    parts: list[str] = []
    title = "external evaluation" if external else "evaluation"
    parts.append(f"<h1>medlens {title} — {html.escape(meta['name'])}</h1>")
    # recomputed: older runs stored none
    metrics["warnings"] = external_warnings(metrics) + model_warnings(metrics)
    parts.append(_warnings_html(metrics["warnings"]))
    parts.append(f"<p class='warn'><strong>{html.escape(DISCLAIMER)}</strong></p>")
    parts.append(
        _table(
            ["", ""],
            [
                [
                    "model",
                    html.escape(
                        f"{meta['model']['name']} ({meta['model']['num_classes']} classes)"
                    ),
                ],
                ["bundle created", html.escape(meta["created"])],
                ["intended use", html.escape(meta.get("intended_use", ""))],
                [
                    "training data",
                    f"{meta['data_fingerprint'].get('n_samples')} images (train + validation), "
                    f"manifest sha256 {meta['data_fingerprint'].get('manifest_sha256', '')[:16]}…",
                ],
                _data_row(metrics),
                [
                    "intervals",
                    f"{int(iv['confidence_level'] * 100)} % stratified bootstrap, {iv['n_bootstrap']} replicates, seed {iv['seed']}",
                ],
            ],
        )
    )
    leak = metrics.get("leakage") or {}
    if leak.get("override"):
        parts.append(
            "<p class='warn'><strong>This split leaks</strong> (trained anyway because "
            f"split.allow_leakage is set): {html.escape(leak.get('message', ''))}</p>"
        )
    elif leak.get("checked"):
        parts.append(
            f"<p class='note'>Split checked: no exact/near copies ({leak.get('copy_groups', 0)} "
            "copy groups kept together) and no patient crosses train/validation/test.</p>"
        )
    parts.append(external_html(metrics))
    parts.append(figure_tables_html(iv, classes, where))
    parts.append(plots.roc_pr_plots(test.y, p_cal, classes))
    cms = {"argmax": metrics["confusion_matrix"]}
    if policy is not None:
        pt = metrics["policy"]["test"]
        cms["decision policy"] = pt["policy_confusion_matrix"]
        parts.append(f"<h2>Decision policy: argmax vs risk-prioritised thresholds ({where})</h2>")
        chosen = (
            "the new site's recalibration part"
            if metrics.get("recalibration")
            else "<strong>validation</strong> only"
        )
        parts.append(
            f"<p>Thresholds chosen on {chosen}, applied in the order "
            f"{' → '.join(policy.priority)} → most probable other class.</p>"
        )
        for rep in policy.validation.values():
            if not rep.get("met", True):
                parts.append(f"<p class='warn'>{html.escape(rep.get('note', ''))}</p>")
        rows = []
        for c in classes:
            r = pt["per_class"][c]
            thr = policy.thresholds.get(c)
            thr_s = (
                "—"
                if thr is None
                else ("not needed (argmax meets target)" if thr >= 1.0 else _num(thr))
            )
            rows.append(
                [
                    c,
                    thr_s,
                    _num(policy.targets.get(c)) if c in policy.targets else "—",
                    _num(r["argmax"]["sensitivity"]),
                    _num(r["policy"]["sensitivity"]),
                    _target_met(policy.targets.get(c), r["policy"]["sensitivity"]),
                    _num(r["sensitivity_gained"]),
                    _num(r["argmax"]["specificity"]),
                    _num(r["policy"]["specificity"]),
                    _num(r["specificity_given_up"]),
                ]
            )
        parts.append(
            _table(
                [
                    "class",
                    "threshold",
                    "target sens.",
                    "sens. argmax",
                    "sens. policy",
                    "target",
                    "sens. gained",
                    "spec. argmax",
                    "spec. policy",
                    "spec. given up",
                ],
                rows,
            )
        )
        mp = pt["missed_priority_positives"]
        change = "n/a" if mp["change_percent"] is None else f"{mp['change_percent']:+.0f} %"
        parts.append(
            f"<p class='note'>Missed priority positives (decided as a non-priority class): "
            f"argmax {mp['argmax']}, policy {mp['policy']} ({change}).</p>"
        )
        if val is not None:
            parts.append(plots.sweep_plot(val, t, policy))
    parts.append(plots.confusion_plot(cms, classes))
    parts.append("<h2>Calibration</h2>")
    parts.append(
        _table(
            ["", "ECE", "MCE"],
            [
                [
                    f"before ({where})",
                    _num(cal["test_before"]["ece"]),
                    _num(cal["test_before"]["mce"]),
                ],
                [
                    f"after temperature scaling ({where})",
                    _num(cal["test_after"]["ece"]),
                    _num(cal["test_after"]["mce"]),
                ],
            ],
        )
    )
    fitted_on = (
        "the new site's recalibration part" if metrics.get("recalibration") else "validation images"
    )
    parts.append(
        f"<p>Temperature T = {t:.3f}, fitted on {cal.get('n_validation', '?')} {fitted_on} "
        "by minimising negative log-likelihood; it does not change any argmax.</p>"
    )
    parts.append(plots.reliability_plot(cal))
    parts.append(recalibration_html(metrics))
    parts.append(conformal_html(metrics))
    if metrics.get("shift"):
        parts.append(shift_html(metrics))
    elif (metrics.get("trust") or {}).get("gate"):
        parts.append("<h2>Input gate</h2>" + gate_html(metrics["trust"]["gate"]))
    parts.append(subgroups_html(metrics))
    parts.append(shortcut_html(metrics.get("shortcuts")))
    parts.append(_other_outputs_html(metrics, meta))
    parts.append(f"<h2>Worklists ({where})</h2>")
    parts.append(_worklist_html(worklists, classes))
    section = run_dir / "explanations" / "section.html"
    if section.is_file():  # written by the run from medlens.explain (CAM scores + overlays)
        parts.append(section.read_text(encoding="utf-8"))
    parts.append(
        f"<footer><p>Generated by medlens on {datetime.now(UTC).isoformat(timespec='seconds')} "
        f"from {html.escape(str(run_dir))}. {html.escape(DISCLAIMER)}</p></footer>"
    )
    doc = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>medlens report — "
        f"{html.escape(meta['name'])}</title><style>{CSS}</style></head><body><main>"
        + "\n".join(parts)
        + "</main></body></html>"
    )
    out = run_dir / "report.html"
    out.write_text(doc, encoding="utf-8")
    (run_dir / "report.json").write_text(json.dumps(metrics, indent=2))
    from medlens.evaluate.worklists import write_worklists_csv

    write_worklists_csv(worklists, classes, run_dir / "worklists.csv")
    return out
