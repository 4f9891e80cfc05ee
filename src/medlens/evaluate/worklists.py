"""Worklists: the held-out cases a clinician should look at first.

Three lists, from test predictions and the bundle's decision policy:

- **missed positives** — a case of a priority class (e.g. tuberculosis) that the policy sent to a
  non-priority class (e.g. normal);
- **borderline** — a priority class's probability within ``margin`` of a threshold that can
  fire, where a small change in the image could flip the decision
  (:meth:`DecisionPolicy.borderline`, the rule the service uses too);
- **confident but wrong** — the most probable class is wrong with probability ≥ ``confident``.
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
                        *[f"{e.probabilities[c]:.4f}" for c in classes],
                        e.reason,
                    ]
                )
