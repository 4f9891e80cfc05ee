"""The evaluation report: one self-contained HTML file (plots embedded) beside the same numbers
as JSON. ``medlens report RUN_DIR`` regenerates it from the files a run wrote, so the report can
never show a figure the run did not compute.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluate.calibration import softmax
from medlens.evaluate.heldout import Scores, threshold_sweep
from medlens.evaluate.intervals import fmt_ci
from medlens.evaluate.policy import DecisionPolicy
from medlens.evaluate.worklists import WorklistEntry, build_worklists

DISCLAIMER = (
    "Research and decision support only. These figures describe held-out data; they are not a "
    "diagnosis. A clinician reviews every image and decides."
)


def _fig_to_img(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _roc_pr_plots(y: np.ndarray, p: np.ndarray, classes: Sequence[str]) -> str:
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
    for i, c in enumerate(classes):
        yb = (y == i).astype(int)
        if 0 < yb.sum() < len(yb):
            fpr, tpr, _ = roc_curve(yb, p[:, i])
            a1.plot(fpr, tpr, label=c)
            prec, rec, _ = precision_recall_curve(yb, p[:, i])
            a2.plot(rec, prec, label=c)
    a1.plot([0, 1], [0, 1], "k:", lw=0.8)
    a1.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (one vs rest, test)")
    a2.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall (test)")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    return _fig_to_img(fig, "ROC and precision-recall curves per class on the test split")


def _confusion_plot(cms: dict[str, list[list[int]]], classes: Sequence[str]) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, len(cms), figsize=(4.2 * len(cms), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (title, cm) in zip(axes, cms.items(), strict=True):
        m = np.array(cm)
        ax.imshow(m, cmap="Blues")
        for (r, c), v in np.ndenumerate(m):
            ax.text(
                c,
                r,
                str(v),
                ha="center",
                va="center",
                color="white" if v > m.max() / 2 else "black",
            )
        ax.set_xticks(range(len(classes)), classes, rotation=30, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set(xlabel="decided", ylabel="true", title=title)
    return _fig_to_img(fig, "confusion matrices on the test split")


def _reliability_plot(cal: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect")
    for key, label in (("reliability_before", "before"), ("reliability_after", "after")):
        r = cal[key]
        conf = [c for c, n in zip(r["confidence"], r["count"], strict=True) if n and c is not None]
        acc = [a for a, n in zip(r["accuracy"], r["count"], strict=True) if n and a is not None]
        ece = cal["test_" + label]["ece"]
        ax.plot(conf, acc, "o-", label=f"{label} calibration (ECE {ece:.3f})")
    ax.set(xlabel="confidence (top class)", ylabel="accuracy", title="Reliability (test)")
    ax.legend(fontsize=8)
    return _fig_to_img(fig, "reliability diagram before and after temperature scaling")


def _sweep_plot(val: Scores, temperature: float, policy: DecisionPolicy) -> str:
    plt = _plt()
    p = softmax(val.logits, temperature)
    fig, axes = plt.subplots(1, len(policy.priority), figsize=(4.5 * len(policy.priority), 3.6))
    axes = np.atleast_1d(axes)
    for ax, c in zip(axes, policy.priority, strict=True):
        s = threshold_sweep(val.y, p, policy.classes.index(c))
        ax.plot(s["threshold"], s["sensitivity"], label="sensitivity")
        ax.plot(s["threshold"], s["specificity"], label="specificity")
        ax.axvline(policy.thresholds[c], color="k", ls="--", lw=0.8, label="chosen threshold")
        if c in policy.targets:
            ax.axhline(policy.targets[c], color="r", ls=":", lw=0.8, label="target sensitivity")
        ax.set(xlabel=f"threshold on p({c})", title=f"{c}: threshold sweep (validation)")
        ax.legend(fontsize=7)
    return _fig_to_img(fig, "threshold sweeps on the validation split")


def _thumb(source: str, size: int = 96) -> str:
    """A small PNG of the image a worklist entry names (blank when it cannot be read)."""
    from PIL import Image

    from medlens.data.io import read_image, read_npz_image

    try:
        if "::" in source:
            path, rest = source.split("::", 1)
            key, idx = rest.rstrip("]").split("[")
            arr = read_npz_image(path, key, int(idx)).array
        else:
            arr = read_image(source).array
    except (MedlensError, ValueError):
        return "<span>(image unavailable)</span>"
    im = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="case thumbnail">'


def _num(v: Any, digits: int = 3) -> str:
    return (
        "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"
    )


def _ci(m: dict[str, Any]) -> str:
    return fmt_ci(
        {k: (float("nan") if m.get(k) is None else m[k]) for k in ("value", "ci_low", "ci_high")}
    )


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    th = "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _worklist_html(
    worklists: dict[str, list[WorklistEntry]], classes: Sequence[str], limit: int = 12
) -> str:
    titles = {
        "missed_positive": "Missed positives (priority class decided as non-priority)",
        "borderline": "Borderline cases (near a threshold)",
        "confident_wrong": "Confident but wrong",
    }
    parts = []
    for key, entries in worklists.items():
        parts.append(f"<h3>{titles[key]} — {len(entries)} case(s)</h3>")
        if not entries:
            parts.append("<p>None on the test split.</p>")
            continue
        rows = [
            [
                _thumb(e.source),
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
                [f"kappa ({h['kappa_weighting']} weighting)", _ci(h["overall"]["kappa"])],
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


def render_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` (and ``report.json``) for a run folder written by ``medlens train``."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise MedlensError(
            f"{run_dir} holds no metrics.json: give a run folder written by `medlens train`"
        )
    metrics = json.loads(metrics_file.read_text())
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    classes = list(meta["classes"])
    test = Scores.read_csv(run_dir / "test_scores.csv", classes)
    val = Scores.read_csv(run_dir / "val_scores.csv", classes)
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
    iv = metrics["intervals"]
    parts: list[str] = []
    parts.append(f"<h1>medlens evaluation — {html.escape(meta['name'])}</h1>")
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
                [
                    "test split",
                    f"{metrics['n']} held-out images, never used for fitting, calibration or thresholds",
                ],
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
    parts.append("<h2>Overall (test, calibrated probabilities, argmax)</h2>")
    names = {
        "accuracy": "accuracy",
        "balanced_accuracy": "balanced accuracy",
        "macro_f1": "macro-F1",
        "mcc": "MCC",
        "kappa": f"Cohen's kappa ({iv['kappa_weighting']} weighting)",
        "macro_roc_auc": "macro ROC-AUC",
        "macro_pr_auc": "macro PR-AUC",
    }
    parts.append(
        _table(
            ["figure", "value [95 % CI]"], [[names[k], _ci(v)] for k, v in iv["overall"].items()]
        )
    )
    parts.append("<h2>Per class (test)</h2>")
    spec = iv["target_specificity"]
    rows = []
    for c in classes:
        m = iv["per_class"][c]
        rows.append(
            [
                c,
                str(m["support"]),
                _ci(m["sensitivity"]),
                _ci(m["specificity"]),
                _ci(m["ppv"]),
                _ci(m["npv"]),
                _ci(m["roc_auc"]),
                _ci(m["pr_auc"]),
                _ci(m["sens_at_spec"]),
            ]
        )
    parts.append(
        _table(
            [
                "class",
                "n",
                "sensitivity",
                "specificity",
                "PPV",
                "NPV",
                "ROC-AUC",
                "PR-AUC",
                f"sens. @ spec. {spec:.2f}",
            ],
            rows,
        )
    )
    parts.append(_roc_pr_plots(test.y, p_cal, classes))
    cms = {"argmax": metrics["confusion_matrix"]}
    if policy is not None:
        pt = metrics["policy"]["test"]
        cms["decision policy"] = pt["policy_confusion_matrix"]
        parts.append("<h2>Decision policy: argmax vs risk-prioritised thresholds (test)</h2>")
        parts.append(
            f"<p>Thresholds chosen on <strong>validation</strong> only, applied in the order "
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
        parts.append(_sweep_plot(val, t, policy))
    parts.append(_confusion_plot(cms, classes))
    parts.append("<h2>Calibration</h2>")
    parts.append(
        _table(
            ["", "ECE", "MCE"],
            [
                ["before (test)", _num(cal["test_before"]["ece"]), _num(cal["test_before"]["mce"])],
                [
                    "after temperature scaling (test)",
                    _num(cal["test_after"]["ece"]),
                    _num(cal["test_after"]["mce"]),
                ],
            ],
        )
    )
    parts.append(
        f"<p>Temperature T = {t:.3f}, fitted on {cal.get('n_validation', '?')} validation images "
        "by minimising negative log-likelihood; it does not change any argmax.</p>"
    )
    parts.append(_reliability_plot(cal))
    parts.append(_other_outputs_html(metrics, meta))
    parts.append("<h2>Worklists (test)</h2>")
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
