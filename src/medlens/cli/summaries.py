"""What ``medlens train``, ``demo`` and ``evaluate`` print once the numbers exist.

Warnings the evaluation raised (a model whose test AUC interval includes chance, a policy that
gives up most of a class's specificity) come first, in a red panel, before any figure that might
reassure. The figures' names and columns come from :mod:`medlens.evaluate.figures`, the one table
the report reads too.
"""

from __future__ import annotations

from typing import Any

from rich.panel import Panel
from rich.table import Table

from medlens.cli._app import console, err_console


def warning_texts(metrics: dict[str, Any]) -> list[str]:
    """The evaluation's warnings as sentences (entries may be strings or ``{message: ...}``)."""
    out = []
    for w in metrics.get("warnings") or []:
        if isinstance(w, dict):
            out.append(str(w.get("message") or w.get("text") or w))
        else:
            out.append(str(w))
    return out


def print_warnings(metrics: dict[str, Any]) -> None:
    texts = warning_texts(metrics)
    if texts:
        console.print(
            Panel(
                "\n".join(f"• {t}" for t in texts),
                title="[bold]WARNING: read before trusting these figures[/]",
                border_style="bold red",
            )
        )


def _ci(m: dict[str, Any] | None) -> str:
    from medlens.evaluate.intervals import fmt_ci

    return fmt_ci(m)


def intervals_table(iv: dict[str, Any]) -> Table:
    """The headline figures with their intervals, names and order from the figures table."""
    from medlens.evaluate import figures as F

    level = round(float(iv.get("confidence_level", 0.95)) * 100)
    t = Table(
        title=f"{level} % intervals (test, {iv.get('n_bootstrap', '?')} bootstrap replicates)"
    )
    t.add_column("figure")
    t.add_column("value [CI]", justify="right")
    for f in F.headline():
        if f.key in iv.get("overall", {}):
            t.add_row(F.display_name(f, iv), _ci(iv["overall"][f.key]))
    for cls, pc in iv.get("per_class", {}).items():
        if "sensitivity" in pc:
            t.add_row(f"sensitivity {cls}", _ci(pc["sensitivity"]))
    return t


def _policy_table(pol: dict[str, Any]) -> Table:
    t = Table(title="Argmax vs risk-prioritised policy (thresholds from validation; test)")
    cols = ("class", "threshold", "target", "sens. argmax", "sens. policy")
    for col in (*cols, "spec. argmax", "spec. policy"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for cls, r in pol["test"]["per_class"].items():
        thr = pol["thresholds"].get(cls)
        tgt = pol["targets"].get(cls)
        t.add_row(
            cls,
            "—" if thr is None else ("argmax" if thr >= 1.0 else f"{thr:.3f}"),
            "—" if tgt is None else f"{tgt:.2f}",
            f"{r['argmax']['sensitivity']:.3f}",
            f"{r['policy']['sensitivity']:.3f}",
            f"{r['argmax']['specificity']:.3f}",
            f"{r['policy']['specificity']:.3f}",
        )
    return t


def print_metrics(m: dict[str, Any], title: str) -> None:
    """Warnings, the per-class table, the confusion matrix, intervals, calibration, policy."""
    from medlens.evaluate.metrics import confusion_table, metrics_table

    print_warnings(m)
    console.print(metrics_table(m, title))
    console.print(confusion_table(m))
    if iv := m.get("intervals"):
        console.print(intervals_table(iv))
    if cal := m.get("calibration"):
        before, after = cal.get("test_before") or {}, cal.get("test_after") or {}
        if "ece" in before and "ece" in after:
            console.print(
                f"calibration: temperature {cal['temperature']:.3f} (fitted on "
                f"{cal.get('fitted_on', 'validation')}); ECE {before['ece']:.3f} → {after['ece']:.3f}, MCE {before['mce']:.3f} → "
                f"{after['mce']:.3f}"
            )
    if pol := m.get("policy"):
        console.print(_policy_table(pol))
        mp = pol["test"]["missed_priority_positives"]
        change = "n/a" if mp["change_percent"] is None else f"{mp['change_percent']:+.0f} %"
        console.print(
            f"missed priority positives: argmax {mp['argmax']} → policy {mp['policy']} ({change})"
        )
        for rep in pol.get("validation", {}).values():
            if not rep.get("met", True):
                err_console.print(f"[yellow]warning[/] {rep.get('note')}")
    print_other_outputs(m)


def print_run(result: Any) -> None:
    """The summary of a finished ``run_recipe``: split, metrics, where the files are."""
    c = result.split_counts
    reused = f" (reused {result.run_dir / 'splits.csv'})" if result.splits_reused else ""
    console.print(f"splits: train {c['train']}, val {c['val']}, test {c['test']}{reused}")
    if result.resumed:
        console.print("training reused/resumed from an earlier run's checkpoint")
    excluded = result.excluded
    if len(excluded) > 20:
        err_console.print(
            f"[yellow]excluded[/] {len(excluded)} unreadable images "
            f"(listed in {result.run_dir / 'metrics.json'} under 'unreadable')"
        )
    else:
        for path, reason in excluded.items():
            err_console.print(f"[yellow]excluded[/] {path}: {reason}")
    print_metrics(result.metrics, "Held-out test metrics (calibrated, argmax)")
    console.print(f"bundle: {result.bundle_dir}  ({result.seconds:.0f} s)")
    if result.report is not None:
        console.print(f"report: {result.report}")
    if warning_texts(result.metrics):
        err_console.print(
            f"[bold red]{len(warning_texts(result.metrics))} warning(s)[/] about this model: "
            "see the top of this summary and of the report"
        )


def print_other_outputs(m: dict[str, Any]) -> None:
    """Ensemble members, extra heads and segmentation: held-out figures with intervals."""
    from medlens.evaluate.figures import weighting_label

    if "members" in m:
        t = Table(title="Ensemble members (test; each trained on the same split)")
        for col in ("member", "weight", "macro-F1", "macro AUC"):
            t.add_column(col)
        for label, r in m["members"].items():
            t.add_row(label, f"{r['weight']:.3f}", _ci(r["macro_f1"]), _ci(r["macro_roc_auc"]))
        ov = m["intervals"]["overall"]
        t.add_row("ensemble", "1", _ci(ov["macro_f1"]), _ci(ov["macro_roc_auc"]))
        console.print(t)
    for name, h in (m.get("heads") or {}).items():
        if h.get("type") == "regression":
            console.print(
                f"head {name} (test, n={h['n']}): MAE {_ci(h['mae'])}, Pearson r "
                f"{_ci(h['pearson_r'])}"
            )
        elif "overall" in h:
            o = h["overall"]
            console.print(
                f"head {name} (test, n={h['n']}): accuracy {_ci(o['accuracy'])}, macro-F1 "
                f"{_ci(o['macro_f1'])}, Cohen's kappa ({weighting_label(h.get('kappa_weighting'))}) "
                f"{_ci(o['kappa'])}"
            )
    if "segmentation" in m:
        sm = m["segmentation"]
        console.print(
            f"segmentation (test, n={sm['n']}): Dice {_ci(sm['dice'])}, IoU {_ci(sm['iou'])}"
        )


def print_subgroups(sub: dict[str, Any] | None) -> None:
    """Per-subgroup headline figures; flagged subgroups in red below the table."""
    if not sub:
        return
    from medlens.evaluate import figures as F
    from medlens.evaluate.subgroups import flagged_texts

    keys = list(sub["overall"])
    t = Table(title=f"Subgroups by {sub['column']} (95 % intervals)")
    for col in ("subgroup", "n", *(F.display_name(k) for k in keys)):
        t.add_column(col)
    t.add_row("all", "", *(_ci(sub["overall"][k]) for k in keys))
    for value, g in sub["groups"].items():
        mark = " [red](below)[/]" if g["below_overall"] else ""
        t.add_row(f"{value}{mark}", str(g["n"]), *(_ci(g["figures"][k]) for k in keys))
    console.print(t)
    for text in flagged_texts(sub):
        err_console.print(f"[bold red]subgroup below overall[/]: {text}", highlight=False)


def print_external(m: dict[str, Any], title: str) -> None:
    """An external evaluation: the verdict first, internal vs external, shift, then the usual."""
    ext = m.get("external") or {}
    if ext.get("transfers") is False:
        console.print(Panel(ext["verdict"], title="[bold]VERDICT[/]", border_style="bold red"))
    elif ext.get("verdict"):
        console.print(f"[bold]verdict[/]: {ext['verdict']}")
    if ext.get("rows"):
        t = Table(title="Internal (bundle's own test) vs external (these data)")
        for col in (
            "figure",
            f"internal (n={ext.get('internal_n')})",
            f"external (n={ext['n']})",
            "",
        ):
            t.add_column(col)
        for r in ext["rows"]:
            t.add_row(r["name"], _ci(r["internal"]), _ci(r["external"]), r["status"])
        console.print(t)
    sh = m.get("shift") or {}
    if sh.get("reference"):
        console.print(
            f"shift: {100 * sh['share_flagged']:.1f} % of the new images outside the training "
            f"range; shifted properties: {', '.join(sh.get('shifted_properties') or []) or 'none'}"
            f" (reference: {sh['reference']})"
        )
    elif sh:
        console.print(f"shift: {sh.get('note')}")
    if (gate := sh.get("gate")) and gate.get("share_flagged") is not None:
        console.print(
            f"input gate: {100 * gate['share_flagged']:.1f} % of the new images not assessed "
            f"({gate['status_counts']})"
        )
    if rec := m.get("recalibration"):
        console.print(
            f"recalibrated on {rec['n_calibration']} images ({rec['how']}): temperature "
            f"{rec['temperature_before']:.3f} → {rec['temperature_after']:.3f}; figures below on "
            f"the other {rec['n_reported']}"
        )
    print_metrics(m, title)
    if c := ((m.get("trust") or {}).get("conformal") or {}).get("test"):
        console.print(
            f"conformal sets (target {c.get('target')}): coverage {_ci(c['marginal_coverage'])}, "
            f"mean set size {_ci(c['mean_set_size'])}"
        )
    print_subgroups(m.get("subgroups"))


def print_crossval(cv: dict[str, Any]) -> None:
    """Per-fold figures, the pooled out-of-fold estimate and which bundle was kept."""
    from medlens.evaluate import figures as F

    keys = [f.key for f in F.leaderboard() if f.key in cv["pooled"]["overall"]]
    t = Table(title=f"{cv['k']}-fold cross-validation (each fold's own test split)")
    for col in ("fold", "n test", "val score", *(F.display_name(k) for k in keys)):
        t.add_column(col)
    for f in cv["folds"]:
        score = f.get("val_score")
        t.add_row(
            str(f["fold"]) + (" (kept)" if f["fold"] == cv["chosen_fold"] else ""),
            str(f["n_test"]),
            "n/a" if score is None else f"{score:.4f}",
            *(_ci(f["overall"].get(k)) for k in keys),
        )
    t.add_row(
        "pooled out-of-fold",
        str(cv["pooled"]["n"]),
        "",
        *(_ci(cv["pooled"]["overall"][k]) for k in keys),
    )
    console.print(t)
    console.print(f"bundle: {cv['bundle']} ({cv['bundle_choice']})")
    console.print(f"report: {cv['report']}")
