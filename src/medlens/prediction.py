"""What one prediction is, and how a list of them is written as CSV.

A :class:`Prediction` always says first whether the image was assessed at all (``status``):

- ``ok``: the model read the image; ``label``/``probabilities``/``decision`` are its answer and
  ``prediction_set`` the classes it cannot rule out at the bundle's coverage (``uncertain`` when
  that is not exactly one class: a person reviews it);
- ``ungradable`` (the pixels carry no readable information: NaN, constant, tiny, saturated) or
  ``out_of_distribution`` (the image does not look like what the model was trained on): **no**
  class decision — ``label`` is empty, ``probabilities`` is empty, ``decision`` is None and
  ``decision_rule`` is ``"not assessed"``. What the network output anyway is kept in ``details``
  for audit, never where a diagnosis is read from.

Kept apart from :mod:`medlens.inference` (which produces predictions) so the CSV rule and the
record have one home that the CLI, the workflow and the service all read.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.common import json_safe
from medlens.errors import MedlensError

DISCLAIMER = "Decision support only, not a diagnosis: a clinician reviews the image and decides."
NOT_ASSESSED = "not assessed"
STATUSES = ("ok", "ungradable", "out_of_distribution")
STATUS_TEXT = {
    "ok": "assessed",
    "ungradable": "not assessed: the image cannot be graded",
    "out_of_distribution": "not assessed: unlike the images this model was trained on",
}

__all__ = [
    "DISCLAIMER",
    "NOT_ASSESSED",
    "STATUSES",
    "STATUS_TEXT",
    "Prediction",
    "write_predictions_csv",
]


@dataclass
class Prediction:
    label: str
    index: int
    probabilities: dict[str, float]
    model: str
    bundle_sha256: str
    preprocess_info: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    disclaimer: str = DISCLAIMER
    logits: list[float] = field(default_factory=list)
    calibrated: bool = False
    decision: str | None = None  # the decision policy's class (None: no policy, or not assessed)
    decision_threshold: float | None = None  # the threshold that fired (None: fallback)
    decision_rule: str = "argmax"
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # other heads' outputs
    modalities_used: list[str] | None = None  # fusion: the modalities this prediction used
    status: str = "ok"  # "ok" | "ungradable" | "out_of_distribution"
    reason: str | None = None  # why the image was not assessed
    gate: dict[str, Any] | None = None  # the input gate's score/threshold/details (None: no gate)
    prediction_set: list[str] | None = None  # conformal set (None: the bundle has no sets)
    uncertain: bool = False  # the set holds other than exactly one class: human review
    details: dict[str, Any] | None = None  # not-assessed images: raw outputs, for audit only

    @property
    def assessed(self) -> bool:
        return self.status == "ok"

    @property
    def confidence(self) -> float:
        """Calibrated probability of ``label``; NaN for an image that was not assessed."""
        return self.probabilities.get(self.label, math.nan)

    @property
    def shown_decision(self) -> str | None:
        """The class a person is shown: the policy's decision, else the most probable class;
        None when the image was not assessed."""
        if not self.assessed:
            return None
        return self.decision or self.label

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "source": self.source,
                "status": self.status,
                "reason": self.reason,
                "label": self.label or None,
                "confidence": self.confidence if self.assessed else None,
                "probabilities": self.probabilities,
                "model": self.model,
                "bundle_sha256": self.bundle_sha256,
                "calibrated": self.calibrated,
                "decision": self.shown_decision,
                "decision_rule": self.decision_rule,
                "decision_threshold": self.decision_threshold,
                "prediction_set": self.prediction_set,
                "uncertain": self.uncertain,
                "gate": self.gate,
                "details": self.details,
                "preprocess_info": self.preprocess_info,
                "heads": self.heads,
                "modalities_used": self.modalities_used,
                "disclaimer": self.disclaimer,
            }
        )


def write_predictions_csv(
    results: Sequence[Prediction | MedlensError],
    sources: Sequence[str | Path],
    classes: Sequence[str],
    path: Path,
) -> None:
    """One row per input, paths in full: whether it was assessed (``status``, ``reason``), the
    policy's decision (what the page and the API show), the threshold that fired (empty:
    argmax), the most probable class and its calibrated probability, each class's probability,
    the conformal ``prediction_set`` and ``uncertain``. A not-assessed image has no decision and
    no probabilities; an unreadable input keeps its row, with the reason in ``error``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        head = ["path", "status", "reason", "decision", "decision_rule", "decision_threshold"]
        mid = ["most_probable", "probability", *[f"p_{c}" for c in classes]]
        tail = ["prediction_set", "uncertain", "calibrated", "model", "error"]
        w.writerow([*head, *mid, *tail])
        for src, r in zip(sources, results, strict=True):
            if not isinstance(r, Prediction):
                w.writerow([src, "unreadable", *[""] * (len(head) + len(mid) + len(tail) - 3), r])
                continue
            thr = r.decision_threshold
            probs = [f"{r.probabilities[c]:.6f}" if c in r.probabilities else "" for c in classes]
            w.writerow(
                [
                    src,
                    r.status,
                    r.reason or "",
                    r.shown_decision or "",
                    r.decision_rule,
                    "" if thr is None else f"{thr:.6f}",
                    r.label if r.assessed else "",
                    f"{r.confidence:.6f}" if r.assessed else "",
                    *probs,
                    "" if r.prediction_set is None else " ".join(r.prediction_set),
                    str(r.uncertain).lower() if r.assessed else "",
                    str(r.calibrated).lower(),
                    r.model,
                    "",
                ]
            )
