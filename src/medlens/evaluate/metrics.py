"""Classification metrics, computed by scikit-learn on held-out predictions.

Specificity and NPV are not in scikit-learn; they are read off its confusion matrix. A class
missing from the labels gives a warning and NaN for its ROC-AUC, never a crash or a made-up value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def classification_metrics(
    y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/specificity/F1, macro-F1, OvR ROC-AUC, confusion."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(f"probs must be N x {k}, got {p.shape} for {len(y)} labels")
    pred = p.argmax(axis=1)
    labels = list(range(k))
    cm = confusion_matrix(y, pred, labels=labels)
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    per_class: dict[str, dict[str, float]] = {}
    aucs = []
    for i, name in enumerate(classes):
        tp = cm[i, i]
        fp = cm[:, i].sum() - tp
        fn = cm[i, :].sum() - tp
        tn = cm.sum() - tp - fp - fn
        present = (y == i).any() and (y != i).any()
        if present:
            auc = float(roc_auc_score((y == i).astype(int), p[:, i]))
        else:
            warnings.warn(
                f"ROC-AUC for class {name!r} is undefined: the labels hold "
                f"{'only' if len(y) and (y == i).all() else 'no'} {name!r} cases",
                RuntimeWarning,
                stacklevel=2,
            )
            auc = float("nan")
        aucs.append(auc)
        per_class[name] = {
            "support": int(support[i]),
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "sensitivity": float(rec[i]),
            "specificity": _safe_div(tn, tn + fp),
            "npv": _safe_div(tn, tn + fn),
            "f1": float(f1[i]),
            "roc_auc": auc,
        }
    valid_aucs = [a for a in aucs if not math.isnan(a)]
    return {
        "n": len(y),
        "classes": list(classes),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "macro_roc_auc": float(np.mean(valid_aucs)) if valid_aucs else float("nan"),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def _f(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def metrics_table(metrics: dict[str, Any], title: str = "Test metrics") -> Any:
    """A rich table of the per-class figures with the overall ones in the caption."""
    from rich.table import Table

    t = Table(
        title=title,
        caption=(
            f"n={metrics['n']}  accuracy={_f(metrics['accuracy'])}  "
            f"macro-F1={_f(metrics['macro_f1'])}  macro ROC-AUC={_f(metrics['macro_roc_auc'])}"
        ),
    )
    for col in ("class", "n", "precision", "sensitivity", "specificity", "F1", "ROC-AUC"):
        t.add_column(col, justify="right" if col != "class" else "left")
    for name, m in metrics["per_class"].items():
        t.add_row(
            name,
            str(m["support"]),
            _f(m["precision"]),
            _f(m["sensitivity"]),
            _f(m["specificity"]),
            _f(m["f1"]),
            _f(m["roc_auc"]),
        )
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
