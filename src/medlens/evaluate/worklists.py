"""Worklists: the held-out cases a clinician should look at first.

Three lists, from test predictions and the bundle's decision policy:

- **missed positives** — a case of a priority class (e.g. tuberculosis) that the policy sent to a
  non-priority class (e.g. normal);
- **borderline** — a priority class's probability within ``margin`` of a threshold that can
  fire, where a small change in the image could flip the decision
  (:meth:`DecisionPolicy.borderline`, the rule the service uses too);
- **confident but wrong** — the most probable class is wrong with probability ≥ ``confident``.

With the run's input-check outcomes (:func:`with_trust_groups`) two more: **not assessed**
(ungradable or out of distribution: no class was shown, a person reads them), listed first, and
**uncertain** (a prediction set of more than one class: human review).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.evaluate.policy import DecisionPolicy


@dataclass
class WorklistEntry:
    worklist: str
    source: str
    true: str
    decision: str
    argmax: str
    probabilities: dict[str, float]
    reason: str


def build_worklists(
    sources: Sequence[str],
    y_true: Sequence[int],
    probs: np.ndarray,
    policy: DecisionPolicy | None,
    classes: Sequence[str],
    margin: float = 0.05,
    confident: float = 0.95,
) -> dict[str, list[WorklistEntry]]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=int)
    arg = p.argmax(axis=1)
    dec = policy.decide(p)[0] if policy is not None else arg
    priority = list(policy.priority) if policy is not None else []
    pos_idx = [classes.index(c) for c in priority]
    out: dict[str, list[WorklistEntry]] = {
        "missed_positive": [],
        "borderline": [],
        "confident_wrong": [],
    }

    def entry(kind: str, i: int, reason: str) -> WorklistEntry:
        return WorklistEntry(
            kind,
            str(sources[i]),
            classes[y[i]],
            classes[dec[i]],
            classes[arg[i]],
            {c: float(p[i, j]) for j, c in enumerate(classes)},
            reason,
        )

    for i in range(len(y)):
        if y[i] in pos_idx and dec[i] not in pos_idx:
            out["missed_positive"].append(
                entry("missed_positive", i, f"{classes[y[i]]} decided as {classes[dec[i]]}")
            )
        if policy is not None:
            near = policy.borderline(p[i], margin)
            if near:
                out["borderline"].append(entry("borderline", i, "; ".join(map(str, near))))
        if arg[i] != y[i] and p[i, arg[i]] >= confident:
            out["confident_wrong"].append(
                entry(
                    "confident_wrong",
                    i,
                    f"p({classes[arg[i]]})={p[i, arg[i]]:.3f} but true {classes[y[i]]}",
                )
            )
    # Most dangerous first: highest probability of the true priority class lost, then borderline
    # by distance, confident-wrong by confidence.
    out["confident_wrong"].sort(key=lambda e: -max(e.probabilities.values()))
    return out


TITLES = {
    "not_assessed": "Not assessed (input check: ungradable or unlike the training images)",
    "missed_positive": "Missed positives (priority class decided as non-priority)",
    "borderline": "Borderline cases (near a threshold that can fire)",
    "confident_wrong": "Confident but wrong",
    "uncertain": "Uncertain — human review (prediction set of more than one class)",
}


def with_trust_groups(
    worklists: dict[str, list[WorklistEntry]], predictions_csv: Path, classes: Sequence[str]
) -> dict[str, list[WorklistEntry]]:
    """``worklists`` with the not-assessed cases first and the uncertain ones last, read from
    a run's ``test_predictions.csv`` (its ``status``/``reason``/``prediction_set`` columns).

    Unchanged when the file is missing or predates those columns. A not-assessed case shows no
    decision (``decision`` is empty); its probabilities are kept for audit only.
    """
    if not predictions_csv.is_file():
        return worklists
    with predictions_csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "status" not in rows[0]:
        return worklists

    def entry(kind: str, r: dict[str, str], reason: str, decision: str) -> WorklistEntry:
        probs = {}
        for c in classes:
            try:
                probs[c] = float(r.get(f"p_{c}") or "nan")
            except ValueError:
                probs[c] = float("nan")
        return WorklistEntry(
            kind, r["source"], r.get("true", ""), decision, r.get("predicted", ""), probs, reason
        )

    not_assessed = [
        entry("not_assessed", r, f"{r['status']}: {r.get('reason', '')}", "")
        for r in rows
        if r.get("status", "ok") != "ok"
    ]
    uncertain = [
        entry("uncertain", r, "set {" + ", ".join(r["prediction_set"].split()) + "}", r["decision"])
        for r in rows
        if r.get("status", "ok") == "ok" and len((r.get("prediction_set") or "").split()) > 1
    ]
    return {"not_assessed": not_assessed, **worklists, "uncertain": uncertain}


def write_worklists_csv(
    worklists: dict[str, list[WorklistEntry]], classes: Sequence[str], path: Path
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "worklist",
                "source",
                "true",
                "decision",
                "argmax",
                *[f"p_{c}" for c in classes],
                "reason",
            ]
        )
        for entries in worklists.values():
            for e in entries:
                w.writerow(
                    [
                        e.worklist,
                        e.source,
                        e.true,
                        e.decision,
                        e.argmax,
                        *[f"{e.probabilities.get(c, float('nan')):.4f}" for c in classes],
                        e.reason,
                    ]
                )
