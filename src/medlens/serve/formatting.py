"""How numbers are shown to a clinician: pages, the PDF and the summary use it.

The rule itself lives in :func:`medlens.common.pct` so the CLI writes probabilities the same way.
"""

from __future__ import annotations

from medlens.common import pct

__all__ = ["pct"]
