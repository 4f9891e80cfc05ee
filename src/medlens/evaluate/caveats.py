"""Warnings a reader must see before any figure: a model that cannot be told from guessing, or
a decision policy that buys its sensitivity with most of a class's specificity.

:func:`model_warnings` reads a run's metrics (the dictionary ``metrics.json`` holds) and returns
``[{"code", "message", ...details}]``. The run stores the list under ``metrics["warnings"]``;
the report recomputes it from the stored figures, so a report regenerated from an older run
warns too. The rules, and why:

- ``auc_includes_chance``: a test ROC-AUC interval (macro or a class's) reaching 0.5. On this
  test set the model's ranking cannot be told apart from a coin; every other figure then
  describes luck as much as skill.
- ``specificity_given_up``: the policy keeps less than half of a class's argmax specificity
  (e.g. 34 of 40 normal images sent to tuberculosis). A headline such as "missed priority
  positives 31 → 0" is then bought with false alarms, and must not be read alone.
- ``few_test_patients`` (first, it qualifies every figure): the test split holds fewer than
  ``FEW_PATIENTS`` patients. The SIJ MRI example tested on 25 slices of one subject: ROC-AUC
  1.000 [1.000–1.000], while three other subjects' slices scored 0.456. Slices are not patients.
- ``no_patient_ids``: the data carry no patient ids, so images of one patient or scan may sit
  in training and test. Look-alike grouping (``split.group_lookalikes``, reported under the
  run's ``leakage.grouping``) removes the part the audit can see, not all of it. Only an
  external set says how the model does on new patients.
"""

from __future__ import annotations

import math
from typing import Any

from medlens.evaluate import figures as F

SPECIFICITY_KEPT_AT_LEAST = 0.5  # a policy keeping less of the argmax specificity is flagged
FEW_PATIENTS = 10  # a test split of fewer patients is anecdotal, whatever its image count


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _includes(m: dict[str, Any] | None, chance: float) -> bool:
    if not m or not _finite(m.get("value")):
        return False
    lo, hi = m.get("ci_low"), m.get("ci_high")
    if _finite(lo) and _finite(hi):
        return lo <= chance <= hi
    return False


def _chance_warnings(iv: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    level = round(100 * float(iv.get("confidence_level", 0.95)))
    for f in F.overall():
        m = iv.get("overall", {}).get(f.key)
        if f.chance is not None and _includes(m, f.chance):
            out.append(
                {
                    "code": "auc_includes_chance",
                    "figure": f.key,
                    "message": (
                        f"The test {F.display_name(f, iv)} is {m['value']:.3f} and its {level} % "
                        f"interval [{m['ci_low']:.3f}–{m['ci_high']:.3f}] includes {f.chance} "
                        "(chance): on this test set the model cannot be told apart from "
                        "guessing. Do not use it for decisions."
                    ),
                }
            )
    for f in F.per_class():
        if f.chance is None:
            continue
        hits = [
            (c, pc[f.key])
            for c, pc in iv.get("per_class", {}).items()
            if _includes(pc.get(f.key), f.chance)
        ]
        if hits:
            listed = "; ".join(
                f"{c} {m['value']:.3f} [{m['ci_low']:.3f}–{m['ci_high']:.3f}]" for c, m in hits
            )
            out.append(
                {
                    "code": "auc_includes_chance",
                    "figure": f.key,
                    "classes": [c for c, _ in hits],
                    "message": (
                        f"The test {F.display_name(f, iv)} interval includes {f.chance} (chance) "
                        f"for {listed}: the model does not tell these classes from the rest "
                        "better than guessing on this test set."
                    ),
                }
            )
    return out


def _specificity_warnings(policy: dict[str, Any]) -> list[dict[str, Any]]:
    test = policy.get("test") or {}
    classes = list(policy.get("classes") or [])
    cm = test.get("policy_confusion_matrix")
    mp = test.get("missed_priority_positives") or {}
    out: list[dict[str, Any]] = []
    for c, row in (test.get("per_class") or {}).items():
        a = (row.get("argmax") or {}).get("specificity")
        q = (row.get("policy") or {}).get("specificity")
        if not (_finite(a) and _finite(q)) or a <= 0 or q >= SPECIFICITY_KEPT_AT_LEAST * a:
            continue
        detail = ""
        if cm and c in classes:
            j = classes.index(c)
            sent = [(classes[r], cm[r][j], sum(cm[r])) for r in range(len(classes)) if r != j]
            fp, neg = sum(s for _, s, _ in sent), sum(n for _, _, n in sent)
            worst = max(sent, key=lambda t: t[1], default=None)
            detail = f" {fp} of {neg} non-{c} test images are decided {c}"
            if worst and worst[1]:
                detail += f" ({worst[1]} of {worst[2]} {worst[0]})"
            detail += "."
        headline = ""
        if _finite(mp.get("argmax")) and _finite(mp.get("policy")):
            headline = (
                f" The fall in missed priority positives ({mp['argmax']} → {mp['policy']}) is "
                "bought with these false alarms; read it together with this cost."
            )
        out.append(
            {
                "code": "specificity_given_up",
                "class": c,
                "argmax_specificity": a,
                "policy_specificity": q,
                "message": (
                    f"The decision policy gives up most of {c}'s specificity on test: "
                    f"{a:.3f} with the most probable class, {q:.3f} with the thresholds."
                    f"{detail}{headline}"
                ),
            }
        )
    return out


def _grouping_note(grouping: dict[str, Any] | None) -> str:
    if not grouping:
        return ""
    if not grouping.get("lookalikes_grouped"):
        return (
            " Look-alike images (adjacent slices, frames of one sweep) were not kept together "
            "in this split (split.group_lookalikes)."
        )
    note = (
        f" Look-alikes were kept together: {grouping.get('images_tied_by_lookalikes', 0)} "
        f"images tied beyond exact and near copies (largest group "
        f"{grouping.get('largest_group', 1)})"
    )
    if grouping.get("ties_refused"):
        note += (
            f"; {grouping['ties_refused']} look-alike tie(s) were refused because a group would "
            f"have exceeded {grouping.get('cap')} images, so some scans may still cross splits"
        )
    return note + "; this catches what the audit can see, not every image of one patient."


def _patient_warnings(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    tp = metrics.get("test_patients") or {}
    if tp.get("ids") is False:
        grouping = (metrics.get("leakage") or {}).get("grouping")
        return [
            {
                "code": "no_patient_ids",
                "message": (
                    "No patient ids: internal figures may be optimistic; validate externally. "
                    "Images of one patient or scan may sit in both training and test, and the "
                    "intervals treat every image as independent." + _grouping_note(grouping)
                ),
            }
        ]
    n = tp.get("n_patients")
    if tp.get("ids") and isinstance(n, int) and n < FEW_PATIENTS:
        return [
            {
                "code": "few_test_patients",
                "n_patients": n,
                "n_images": tp.get("n_images"),
                "message": (
                    f"Test = {n} patient{'s' if n != 1 else ''} ({tp.get('n_images')} images): "
                    "figures are anecdotal. The intervals resample patients, and no interval "
                    f"from fewer than {FEW_PATIENTS} patients says how the model does on the "
                    "next one; validate on more patients."
                ),
            }
        ]
    return []


def model_warnings(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"code", "message", ...}]`` for a run's metrics; empty when nothing needs saying.

    Warnings about who the test split holds come first: they qualify every figure after them.
    """
    out: list[dict[str, Any]] = _patient_warnings(metrics)
    if metrics.get("intervals"):
        out += _chance_warnings(metrics["intervals"])
    if metrics.get("policy"):
        out += _specificity_warnings(metrics["policy"])
    return out
