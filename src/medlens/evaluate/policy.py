"""Risk-prioritised decision policy: per-class thresholds chosen on validation, applied in order.

The rule, in priority order (most dangerous first, e.g. tuberculosis, then pneumonia): decide the
class when its calibrated probability reaches its threshold *or* it is the most probable class;
a case no priority class claims gets the most probable remaining class (e.g. normal). A
threshold therefore only ever adds sensitivity to what the argmax already gives.

Thresholds are chosen on the **validation** split only, in priority order, each as the highest
threshold at which the class's validation sensitivity under the policy meets its target, so it
costs as little specificity as the target allows; when the argmax alone already meets the target
the threshold is 1.0 (it never needs to fire). A target validation cannot meet is reported, not
hidden.

A case is **borderline** (:meth:`DecisionPolicy.borderline`) when a priority class's probability
lies within a margin of a threshold *that can fire*: a threshold of 1.0 or more (the argmax alone
meets the target) or a class without a threshold never makes a case borderline, since no small
change in its probability could flip the decision through it. Worklists, reports and the service
all ask this one rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np


class NearThreshold(NamedTuple):
    """A priority class whose probability is within the margin of its (firing) threshold."""

    cls: str
    probability: float
    threshold: float

    @property
    def distance(self) -> float:
        return abs(self.probability - self.threshold)

    def __str__(self) -> str:
        return f"p({self.cls}) = {self.probability:.3f}, threshold {self.threshold:.2f}"


@dataclass
class DecisionPolicy:
    classes: list[str]
    priority: list[str]
    thresholds: dict[str, float]
    targets: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    def decide(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decisions (class indices) and which class's threshold was reached (-1: none)."""
        p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        n = p.shape[0]
        arg = p.argmax(axis=1)
        decision = np.full(n, -1)
        fired = np.full(n, -1)
        for c in self.priority:
            i = self.classes.index(c)
            reached = p[:, i] >= self.thresholds[c]
            hit = (decision < 0) & (reached | (arg == i))
            decision[hit] = i
            fired[hit & reached] = i
        rest = [i for i, c in enumerate(self.classes) if c not in self.priority]
        undecided = decision < 0
        if undecided.any():
            rest = rest or list(range(len(self.classes)))
            sub = p[undecided][:, rest]
            decision[undecided] = np.array(rest)[sub.argmax(axis=1)]
        return decision, fired

    def can_fire(self, cls: str) -> bool:
        """Whether ``cls`` has a threshold that can decide a case (a threshold ≥ 1 never does
        more than the argmax; a class without one has no threshold at all)."""
        t = self.thresholds.get(cls)
        return cls in self.priority and t is not None and t < 1.0

    def borderline(
        self, probabilities: Mapping[str, float] | Sequence[float] | np.ndarray, margin: float
    ) -> list[NearThreshold]:
        """The priority classes whose probability is within ``margin`` of a threshold that can
        fire, in priority order; empty when the case is not borderline.

        ``probabilities``: one case, as ``{class: p}`` or a sequence in ``self.classes`` order.
        ``str()`` of an entry reads ``p(tuberculosis) = 0.350, threshold 0.30``.
        """
        if isinstance(probabilities, Mapping):
            prob = {c: float(probabilities.get(c, 0.0)) for c in self.priority}
        else:
            row = np.asarray(probabilities, dtype=np.float64).reshape(-1)
            if len(row) != len(self.classes):
                raise ValueError(
                    f"{len(row)} probabilities for the policy's {len(self.classes)} classes"
                )
            prob = {c: float(row[self.classes.index(c)]) for c in self.priority}
        out = []
        for c in self.priority:
            if self.can_fire(c) and abs(prob[c] - self.thresholds[c]) <= margin:
                out.append(NearThreshold(c, prob[c], float(self.thresholds[c])))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "priority": self.priority,
            "thresholds": self.thresholds,
            "targets": self.targets,
            "validation": self.validation,
            "rule": "first priority class whose probability >= its threshold; else the most "
            "probable non-priority class",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionPolicy:
        return cls(
            list(d["classes"]),
            list(d["priority"]),
            {k: float(v) for k, v in d["thresholds"].items()},
            dict(d.get("targets", {})),
            dict(d.get("validation", {})),
        )


def fit_policy(
    y_val: Sequence[int],
    probs_val: np.ndarray,
    classes: Sequence[str],
    priority: Sequence[str],
    targets: dict[str, float],
) -> DecisionPolicy:
    """Choose thresholds on validation so each priority class meets its sensitivity target.

    A class without a target keeps threshold 0.5. When even the lowest threshold cannot reach a
    target (earlier classes already claim too many of its cases, or too few validation cases),
    the threshold giving the highest reachable sensitivity is kept and ``met`` is False.
    """
    y = np.asarray(y_val, dtype=int)
    p = np.asarray(probs_val, dtype=np.float64)
    classes = list(classes)
    arg = p.argmax(axis=1)
    claimed = np.zeros(len(y), dtype=bool)  # cases already decided by a higher-priority class
    thresholds: dict[str, float] = {}
    report: dict[str, Any] = {}
    for c in priority:
        i = classes.index(c)
        pos = y == i
        n_pos = int(pos.sum())
        target = targets.get(c)
        free = pos & ~claimed
        argmax_hits = free & (arg == i)
        if target is None:
            thresholds[c] = 1.0
        elif n_pos == 0:
            thresholds[c] = 1.0
            report[c] = {
                "target": target,
                "achieved": float("nan"),
                "met": False,
                "n_val_positives": 0,
                "note": f"no {c} cases in validation: no threshold can be chosen",
            }
        else:
            best_t, best_s = 1.0, float(argmax_hits.sum()) / n_pos
            if best_s < target:
                for t in np.sort(np.unique(p[free, i]))[::-1]:  # high → low
                    best_t = float(t)
                    best_s = float((free & ((p[:, i] >= t) | (arg == i))).sum()) / n_pos
                    if best_s >= target:
                        break
            thresholds[c] = best_t
            met = best_s >= target
            report[c] = {
                "target": target,
                "achieved": best_s,
                "met": met,
                "n_val_positives": n_pos,
                "argmax_sensitivity": float(((arg == i) & pos).sum()) / n_pos,
            }
            if best_t >= 1.0:
                report[c]["note"] = "the most probable class alone meets the target on validation"
            if not met:
                report[c]["note"] = (
                    f"validation cannot meet the {c} sensitivity target {target:.2f}: the best "
                    f"reachable is {best_s:.2f} (at threshold {best_t:.3f})"
                )
        claimed |= (p[:, i] >= thresholds[c]) | (arg == i)
    policy = DecisionPolicy(classes, list(priority), thresholds, dict(targets), report)
    dec, _ = policy.decide(p)
    for c in priority:
        i = classes.index(c)
        if c in report and (y == i).any():
            report[c]["validation_sensitivity"] = float(
                ((dec == i) & (y == i)).sum() / (y == i).sum()
            )
    return policy


def compare_argmax_policy(
    y_true: Sequence[int], probs: np.ndarray, policy: DecisionPolicy
) -> dict[str, Any]:
    """Argmax vs policy on held-out data: per class sensitivity/specificity and missed positives."""
    from sklearn.metrics import confusion_matrix

    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=np.float64)
    k = len(policy.classes)
    arg = p.argmax(axis=1)
    pol, _ = policy.decide(p)
    out: dict[str, Any] = {"per_class": {}}
    for name, pred in (("argmax", arg), ("policy", pol)):
        cm = confusion_matrix(y, pred, labels=list(range(k)))
        out[f"{name}_confusion_matrix"] = cm.tolist()
        out[f"{name}_accuracy"] = float((pred == y).mean()) if len(y) else float("nan")
    positives = [policy.classes.index(c) for c in policy.priority]
    for i, c in enumerate(policy.classes):
        row = {}
        for name, pred in (("argmax", arg), ("policy", pol)):
            tp = int(((pred == i) & (y == i)).sum())
            fn = int(((pred != i) & (y == i)).sum())
            tn = int(((pred != i) & (y != i)).sum())
            fp = int(((pred == i) & (y != i)).sum())
            row[name] = {
                "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
                "specificity": tn / (tn + fp) if tn + fp else float("nan"),
                "missed": fn,
            }
        row["sensitivity_gained"] = row["policy"]["sensitivity"] - row["argmax"]["sensitivity"]
        row["specificity_given_up"] = row["argmax"]["specificity"] - row["policy"]["specificity"]
        out["per_class"][c] = row
    # A missed positive: a case of a priority class decided as a non-priority class (e.g. normal).
    is_pos = np.isin(y, positives)
    missed_arg = int((is_pos & ~np.isin(arg, positives)).sum())
    missed_pol = int((is_pos & ~np.isin(pol, positives)).sum())
    out["missed_priority_positives"] = {
        "argmax": missed_arg,
        "policy": missed_pol,
        "change_percent": (100.0 * (missed_pol - missed_arg) / missed_arg)
        if missed_arg
        else float("nan"),
    }
    return out
