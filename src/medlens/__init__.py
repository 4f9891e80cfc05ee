"""medlens: from a folder of labelled scans to a calibrated, explainable, verified screening model.

The package imports light: heavy parts (torch, timm, Lightning, pydicom, nibabel) are imported by
the modules that use them, so ``import medlens`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
