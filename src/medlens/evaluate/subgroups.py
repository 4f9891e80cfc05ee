"""Per-subgroup figures (site, sex, device, source format...) with intervals, and the subgroups
that do worse than the model as a whole.

A subgroup is **flagged** on a figure when its whole interval lies below the overall interval
(its upper bound under the overall lower bound): the two intervals do not overlap. The subgroup's
cases are part of the overall set, so this is conservative — a flag is a clear signal, not a
borderline one; a subgroup too small for an interval is listed as such and never flagged.

Values come from a manifest column (``sample.get(column)``; ``patient_id`` also works), or — when
the manifest has no such column — from the decoded images: ``source_format`` (png, dicom...) and
``image_size`` (``HxW``), the two facts every image has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.common import json_safe
from medlens.evaluate import figures as F
from medlens.evaluate.intervals import metrics_with_intervals

DERIVED = ("source_format", "image_size")
MIN_CASES = 10  # fewer cases in a subgroup: figures shown, no interval claimed, never flagged
MISSING = "(missing)"

__all__ = ["DERIVED", "MIN_CASES", "flagged_texts", "subgroup_figures", "subgroup_values"]


def _derived(sample: Any, column: str) -> str:
    from medlens.errors import MedlensError
    from medlens.evaluate.shift import image_facts

    try:
        return image_facts(sample.load())[column]
    except MedlensError:
        return MISSING


def subgroup_values(samples: Sequence[Any], column: str, derive: bool = False) -> list[str]:
    """One subgroup value per sample: the manifest column, or (``derive``) a decoded-image fact
    named in :data:`DERIVED`."""
    if derive:
        if column not in DERIVED:
            raise ValueError(f"{column!r} is not a derived column ({', '.join(DERIVED)})")
        return [_derived(s, column) for s in samples]
    if column == "patient_id":
        return [s.patient_id or MISSING for s in samples]
    return [s.get(column) or MISSING for s in samples]


def _below(group: dict[str, Any], overall: dict[str, Any]) -> bool:
    hi, lo = group.get("ci_high"), overall.get("ci_low")
    return (
        isinstance(hi, int | float)
        and isinstance(lo, int | float)
        and math.isfinite(hi)
        and math.isfinite(lo)
        and hi < lo
    )


def subgroup_figures(
    values: Sequence[str],
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    overall: dict[str, Any],
    column: str,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    ordinal: bool = False,
    target_specificity: float = 0.9,
) -> dict[str, Any]:
    """Headline figures per subgroup with intervals; ``overall`` is the whole set's
    ``intervals["overall"]``. Returns ``{column, groups: {value: {...}}, flagged: [...]}``."""
    import warnings

    keys = [f.key for f in F.headline() if f.key in overall]
    vals = np.asarray(values, dtype=object)
    groups: dict[str, Any] = {}
    flagged: list[dict[str, Any]] = []
    for value in sorted(set(values), key=str):
        rows = np.flatnonzero(vals == value)
        entry: dict[str, Any] = {
            "n": len(rows),
            "class_counts": {c: int((y[rows] == i).sum()) for i, c in enumerate(classes)},
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            iv = metrics_with_intervals(
                y[rows],
                probs[rows],
                classes,
                n_bootstrap=n_bootstrap if len(rows) >= MIN_CASES else 0,
                seed=seed,
                alpha=alpha,
                ordinal=ordinal,
                target_specificity=target_specificity,
            )
        entry["figures"] = {k: iv["overall"][k] for k in keys}
        below = [k for k in keys if len(rows) >= MIN_CASES and _below(iv["overall"][k], overall[k])]
        entry["below_overall"] = below
        if len(rows) < MIN_CASES:
            entry["note"] = f"fewer than {MIN_CASES} cases: no interval"
        for k in below:
            flagged.append({"group": value, "figure": k})
        groups[str(value)] = entry
    return json_safe(
        {
            "column": column,
            "rule": (
                "flagged: the subgroup's interval lies wholly below the overall interval "
                "(upper bound under the overall lower bound)"
            ),
            "overall": {k: overall[k] for k in keys},
            "groups": groups,
            "flagged": flagged,
        }
    )


def flagged_texts(sub: dict[str, Any]) -> list[str]:
    """One sentence per flagged subgroup and figure, for the CLI and the report."""
    from medlens.evaluate.intervals import fmt_ci

    out = []
    for f in sub.get("flagged", []):
        g = sub["groups"][str(f["group"])]
        name = F.display_name(f["figure"])
        out.append(
            f"{sub['column']} = {f['group']} (n={g['n']}): {name} "
            f"{fmt_ci(g['figures'][f['figure']])} lies below the overall "
            f"{fmt_ci(sub['overall'][f['figure']])}"
        )
    return out


def subgroups_with(
    values: Sequence[str],
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    overall: dict[str, Any],
    column: str,
    ev: Any,
) -> dict[str, Any]:
    """:func:`subgroup_figures` with a recipe's ``evaluate`` settings (bootstrap count, seed,
    confidence, ordinal classes, target specificity), as runs and external evaluation use it."""
    return subgroup_figures(
        values,
        y,
        probs,
        classes,
        overall,
        column,
        n_bootstrap=ev.n_bootstrap,
        seed=ev.bootstrap_seed,
        alpha=1 - ev.confidence,
        ordinal=ev.ordinal,
        target_specificity=ev.target_specificity,
    )
