"""Point figures on held-out predictions, and the terminal tables that show them.

Every figure is computed by its one function in :mod:`medlens.evaluate.figures` (the same one the
intervals use); this module only shapes them as a flat dictionary for ``medlens evaluate`` and the
run summary. A class missing from the labels gives a warning and NaN for its ROC-AUC, never a
crash or a made-up value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.evaluate import figures as F


def classification_metrics(
    y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Every figure of the table (overall ones at the top level, per-class ones under
    ``per_class``, with ``support`` and the aliases ``precision`` = PPV and ``recall`` =
    sensitivity) plus the confusion matrix (rows true, columns argmax)."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(f"probs must be N x {k}, got {p.shape} for {len(y)} labels")
    for i, name in enumerate(classes):
        if not ((y == i).any() and (y != i).any()):
            warnings.warn(
                f"ROC-AUC for class {name!r} is undefined: the labels hold "
                f"{'only' if len(y) and (y == i).all() else 'no'} {name!r} cases",
                RuntimeWarning,
                stacklevel=2,
            )
    basis = F.Basis(y, p, k, quadratic=False, target_spec=0.9)
    values = F.compute(basis)
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        row: dict[str, Any] = {"support": int((y == i).sum())}
        row.update({f.key: float(values[f.key][i]) for f in F.per_class()})
        row["precision"] = 0.0 if math.isnan(row["ppv"]) else row["ppv"]  # as sklearn: 0
        row["recall"] = 0.0 if math.isnan(row["sensitivity"]) else row["sensitivity"]
        per_class[name] = row
    return {
        "n": len(y),
        "classes": list(classes),
        **{f.key: float(values[f.key]) for f in F.overall()},
        "per_class": per_class,
        "confusion_matrix": basis.confusion.tolist(),
    }


def _f(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def metrics_table(metrics: dict[str, Any], title: str = "Test metrics") -> Any:
    """A rich table of the headline per-class figures with the overall ones in the caption."""
    from rich.table import Table

    caption = "  ".join(
        [f"n={metrics['n']}"]
        + [f"{F.column_name(f)}={_f(metrics.get(f.key))}" for f in F.headline() if f.key in metrics]
    )
    t = Table(title=title, caption=caption)
    cols = F.headline(per_class_figures=True)
    t.add_column("class")
    t.add_column("n", justify="right")
    for f in cols:
        t.add_column(F.column_name(f), justify="right")
    for name, m in metrics["per_class"].items():
        t.add_row(name, str(m["support"]), *(_f(m.get(f.key)) for f in cols))
    return t


def confusion_table(metrics: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="Confusion matrix (rows: true, columns: predicted)")
    t.add_column("true \\ pred")
    for c in metrics["classes"]:
        t.add_column(c, justify="right")
    for c, row in zip(metrics["classes"], metrics["confusion_matrix"], strict=True):
        t.add_row(c, *(str(v) for v in row))
    return t
