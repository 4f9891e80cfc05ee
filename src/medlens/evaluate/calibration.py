"""Calibration: how far confidence can be trusted, and temperature scaling fitted on validation.

ECE and MCE come from torchmetrics (top-label, equal-width bins). Temperature scaling (Guo et al.
2017) divides the logits by one scalar T fitted by minimising validation NLL; it never changes the
argmax, so accuracy is untouched while confidences become honest. The fitted T is stored in the
bundle and applied by the Predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibration_errors(
    y_true: Sequence[int], probs: np.ndarray, n_bins: int = 15
) -> dict[str, float]:
    """Expected and maximum calibration error of the top-label confidence (torchmetrics)."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    k = p.shape[1]
    ece = multiclass_calibration_error(p, y, num_classes=k, n_bins=n_bins, norm="l1")
    mce = multiclass_calibration_error(p, y, num_classes=k, n_bins=n_bins, norm="max")
    return {"ece": float(ece), "mce": float(mce), "n_bins": n_bins}


def reliability_curve(
    y_true: Sequence[int], probs: np.ndarray, n_bins: int = 15
) -> dict[str, list]:
    """Per bin of top-label confidence: mean confidence, accuracy and count (for the diagram)."""
    p = np.asarray(probs)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(y_true)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out: dict[str, list] = {
        "bin_low": [],
        "bin_high": [],
        "confidence": [],
        "accuracy": [],
        "count": [],
    }
    for b in range(n_bins):
        m = which == b
        out["bin_low"].append(float(edges[b]))
        out["bin_high"].append(float(edges[b + 1]))
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else float("nan"))
        out["accuracy"].append(float(correct[m].mean()) if m.any() else float("nan"))
    return out


@dataclass
class TemperatureScaling:
    temperature: float = 1.0

    def fit(self, logits: np.ndarray, y_true: Sequence[int]) -> TemperatureScaling:
        """Minimise the negative log-likelihood over log T (bounded, so T stays in [0.05, 20])."""
        from scipy.optimize import minimize_scalar

        z = np.asarray(logits, dtype=np.float64)
        y = np.asarray(y_true, dtype=int)
        if len(y) == 0:
            raise ValueError("cannot fit a temperature on an empty validation set")

        def nll(log_t: float) -> float:
            p = softmax(z, float(np.exp(log_t)))
            return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None)).mean())

        res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        self.temperature = float(np.exp(res.x))
        return self

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperature)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "temperature", "temperature": self.temperature}
