"""The report's pictures: ROC/PR curves, confusion matrices, reliability diagram, threshold
sweeps and case thumbnails, each returned as an ``<img>`` tag with a PNG embedded, so the report
stays one self-contained file. matplotlib is imported on first use (headless ``Agg``).
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluate.calibration import softmax
from medlens.evaluate.heldout import Scores, threshold_sweep
from medlens.evaluate.policy import DecisionPolicy


def fig_to_img(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_pr_plots(y: np.ndarray, p: np.ndarray, classes: Sequence[str]) -> str:
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
    for i, c in enumerate(classes):
        yb = (y == i).astype(int)
        if 0 < yb.sum() < len(yb):
            fpr, tpr, _ = roc_curve(yb, p[:, i])
            a1.plot(fpr, tpr, label=c)
            prec, rec, _ = precision_recall_curve(yb, p[:, i])
            a2.plot(rec, prec, label=c)
    a1.plot([0, 1], [0, 1], "k:", lw=0.8)
    a1.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (one vs rest, test)")
    a2.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall (test)")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    return fig_to_img(fig, "ROC and precision-recall curves per class on the test split")


def _wrap(label: str, width: int = 12) -> str:
    """A long class name over several lines, so neighbouring tick labels never overlap."""
    return "\n".join(textwrap.wrap(str(label), width, break_long_words=True)) or str(label)


def confusion_plot(cms: dict[str, list[list[int]]], classes: Sequence[str]) -> str:
    """One matrix per decision rule. Tick labels are wrapped and the column ones rotated (and
    the panel grows with the number of classes) so long class names stay readable."""
    plt = _plt()
    k = len(classes)
    side = max(3.8, 0.75 * k + 2.2)
    fig, axes = plt.subplots(1, len(cms), figsize=(side * 1.1 * len(cms), side))
    axes = np.atleast_1d(axes)
    labels = [_wrap(c) for c in classes]
    for ax, (title, cm) in zip(axes, cms.items(), strict=True):
        m = np.array(cm)
        ax.imshow(m, cmap="Blues")
        for (r, c), v in np.ndenumerate(m):
            ax.text(
                c,
                r,
                str(v),
                ha="center",
                va="center",
                color="white" if v > m.max() / 2 else "black",
            )
        ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
        ax.set(xlabel="decided", ylabel="true", title=title)
    fig.tight_layout()
    return fig_to_img(fig, "confusion matrices on the test split")


def reliability_plot(cal: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect")
    for key, label in (("reliability_before", "before"), ("reliability_after", "after")):
        r = cal[key]
        conf = [c for c, n in zip(r["confidence"], r["count"], strict=True) if n and c is not None]
        acc = [a for a, n in zip(r["accuracy"], r["count"], strict=True) if n and a is not None]
        ece = cal["test_" + label]["ece"]
        ax.plot(conf, acc, "o-", label=f"{label} calibration (ECE {ece:.3f})")
    ax.set(xlabel="confidence (top class)", ylabel="accuracy", title="Reliability (test)")
    ax.legend(fontsize=8)
    return fig_to_img(fig, "reliability diagram before and after temperature scaling")


def sweep_plot(val: Scores, temperature: float, policy: DecisionPolicy) -> str:
    plt = _plt()
    p = softmax(val.logits, temperature)
    fig, axes = plt.subplots(1, len(policy.priority), figsize=(4.5 * len(policy.priority), 3.6))
    axes = np.atleast_1d(axes)
    for ax, c in zip(axes, policy.priority, strict=True):
        s = threshold_sweep(val.y, p, policy.classes.index(c))
        ax.plot(s["threshold"], s["sensitivity"], label="sensitivity")
        ax.plot(s["threshold"], s["specificity"], label="specificity")
        ax.axvline(policy.thresholds[c], color="k", ls="--", lw=0.8, label="chosen threshold")
        if c in policy.targets:
            ax.axhline(policy.targets[c], color="r", ls=":", lw=0.8, label="target sensitivity")
        ax.set(xlabel=f"threshold on p({c})", title=f"{c}: threshold sweep (validation)")
        ax.legend(fontsize=7)
    return fig_to_img(fig, "threshold sweeps on the validation split")


def thumb(source: str, size: int = 96) -> str:
    """A small PNG of the image a worklist entry names (blank when it cannot be read)."""
    from PIL import Image

    from medlens.data.io import read_image, read_npz_image

    try:
        if "::" in source:
            path, rest = source.split("::", 1)
            key, idx = rest.rstrip("]").split("[")
            arr = read_npz_image(path, key, int(idx)).array
        else:
            arr = read_image(source).array
    except (MedlensError, ValueError):
        return "<span>(image unavailable)</span>"
    im = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="case thumbnail">'
