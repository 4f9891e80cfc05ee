"""A bundle's trust files: the input gate, the conformal prediction sets, the heatmap evidence.

Written once a run has fitted them (:func:`write_trust`, through :func:`medlens.bundle.add_file`
so every file is in ``SHA256SUMS`` and verified on load), read by every predictor
(:func:`load_trust`)::

    gate.json          the gate's thresholds, method, min_size, validation pass rate
    gate.safetensors   its arrays (class means, precision, acquisition median/scale): no pickle
    conformal.json     per-class conformal thresholds and the coverage they were fitted at
    explanations.json  the run's localisation/faithfulness summary and one verdict per method

A bundle made before these existed loads with each part marked ``absent`` and a sentence that
says so; nothing is invented for it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.bundle import Bundle, add_file
from medlens.common import json_safe
from medlens.errors import BundleError
from medlens.evaluate.conformal import ConformalSets
from medlens.evaluate.gate import InputGate

GATE_JSON = "gate.json"
GATE_ARRAYS = "gate.safetensors"
CONFORMAL = "conformal.json"
EVIDENCE = "explanations.json"
GATE_ABSENT = "input check not available for this model (made before input checks)"
SETS_ABSENT = "prediction sets not available for this model (made before prediction sets)"

__all__ = [
    "CONFORMAL",
    "EVIDENCE",
    "GATE_ABSENT",
    "GATE_ARRAYS",
    "GATE_JSON",
    "SETS_ABSENT",
    "TrustState",
    "load_trust",
    "write_trust",
]


@dataclass
class TrustState:
    """What a predictor knows about the edge of its model; ``None`` parts are absent."""

    gate: InputGate | None = None
    sets: ConformalSets | None = None
    evidence: dict[str, dict[str, Any]] | None = None  # {method: {verdict, line, n, faithful}}
    notes: list[str] = field(default_factory=list)

    @property
    def gate_status(self) -> str:
        return "present" if self.gate is not None else "absent"

    @property
    def sets_status(self) -> str:
        return "present" if self.sets is not None else "absent"

    def evidence_line(self, method: str) -> str:
        """The one line of localisation evidence shown beside a heatmap of ``method``."""
        from medlens.explain.section import evidence_line

        return evidence_line(self.evidence, method)

    def describe(self) -> dict[str, Any]:
        """JSON for a model's description (API ``/models``, CLI)."""
        return json_safe(
            {
                "input_check": self.gate_status,
                "prediction_sets": self.sets_status,
                "coverage": self.sets.coverage if self.sets is not None else None,
                "gate_validation_pass": self.gate.val_pass_achieved if self.gate else None,
                "heatmap_evidence": {m: v["verdict"] for m, v in (self.evidence or {}).items()},
                "notes": self.notes,
            }
        )


def load_trust(bundle: Bundle) -> TrustState:
    """Read the (already verified) trust files of ``bundle``; absent ones are noted, not errors.

    A gate written by another gate version is refused by :meth:`InputGate.from_state` with a
    message naming the fix.
    """
    state = TrustState()
    meta = bundle.read_json(GATE_JSON)
    if meta is not None:
        arrays_path = bundle.path / GATE_ARRAYS
        if not arrays_path.is_file():
            raise BundleError(f"{bundle.path}: {GATE_JSON} without {GATE_ARRAYS}; re-export it")
        from safetensors.numpy import load_file

        try:
            state.gate = InputGate.from_state(meta, load_file(str(arrays_path)))
        except (ValueError, KeyError) as exc:
            raise BundleError(f"{bundle.path}: input gate unreadable: {exc}") from None
    else:
        state.notes.append(GATE_ABSENT)
    sets = bundle.read_json(CONFORMAL)
    if sets is not None:
        try:
            state.sets = ConformalSets.from_dict(sets)
        except ValueError as exc:
            raise BundleError(f"{bundle.path}: {exc}") from None
        if len(state.sets.thresholds) != len(bundle.classes):
            raise BundleError(f"{bundle.path}: {CONFORMAL} has the wrong number of classes")
    else:
        state.notes.append(SETS_ABSENT)
    ev = bundle.read_json(EVIDENCE)
    if isinstance(ev, dict):
        state.evidence = dict(ev.get("verdicts") or {})
    return state


def write_trust(
    bundle_dir: str | Path,
    gate: InputGate | None = None,
    sets: ConformalSets | None = None,
    explanations: dict[str, Any] | None = None,
) -> None:
    """Add the given parts to a bundle (hashed into ``SHA256SUMS`` by :func:`add_file`).

    ``explanations``: the run's summary (``localisation`` + ``faithfulness``); stored with the
    per-method verdicts of :func:`medlens.explain.section.heatmap_verdicts` only when at least
    one method was scored against lesion masks.
    """
    if gate is not None:
        from safetensors.numpy import save

        meta, arrays = gate.to_state()
        add_file(bundle_dir, GATE_ARRAYS, save(arrays))
        add_file(bundle_dir, GATE_JSON, json.dumps(meta, indent=2))
    if sets is not None:
        add_file(bundle_dir, CONFORMAL, json.dumps(sets.to_dict(), indent=2))
    if explanations:
        from medlens.explain.section import heatmap_verdicts

        verdicts = heatmap_verdicts(explanations)
        if verdicts:
            body = {"verdicts": verdicts, "summary": json_safe(explanations)}
            buf = io.StringIO()
            json.dump(body, buf, indent=2, default=str)
            add_file(bundle_dir, EVIDENCE, buf.getvalue())
