"""How numbers are shown to a clinician, in one place: pages, the PDF and the summary use it.

A percentage never claims a certainty the model did not give: a probability below 1 is never
printed as "100%" (a 99.6 % bar beside a "100 %" headline reads as a contradiction, and as a
certainty), and one above 0 never as "0%".
"""

from __future__ import annotations

import math


def pct(p: float | None, decimals: int = 0) -> str:
    """``0.42`` → ``"42%"``; ``0.996`` → ``">99%"`` (``">99.9%"`` with one decimal);
    ``0.001`` → ``"<1%"``; exactly 1 or 0 print as ``"100%"`` / ``"0%"``; None or NaN → ``"n/a"``."""
    if p is None or not math.isfinite(p):
        return "n/a"
    text = f"{100 * p:.{decimals}f}"
    step = 10.0**-decimals
    if p < 1 and float(text) >= 100:
        return f">{100 - step:.{decimals}f}%"
    if p > 0 and float(text) <= 0:
        return f"<{step:.{decimals}f}%"
    return f"{text}%"
