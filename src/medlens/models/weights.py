"""Load a local weights file into a model without unpickling arbitrary objects."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medlens.errors import MedlensError


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a ``.pt/.pth`` state dict (``weights_only=True``)."""
    if not path.is_file():
        raise MedlensError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: say which and why
        raise MedlensError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MedlensError(f"weights file {path} holds no state dict")
    return state


def load_weights_file(model: nn.Module, path: Path, skip_mismatched: bool = True) -> list[str]:
    """Load matching tensors; return the names skipped (e.g. a head of another size)."""
    state = read_state_dict(path)
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(keep))
    if skipped and not skip_mismatched:
        raise MedlensError(f"weights file {path} does not fit the model: {skipped[:5]}")
    model.load_state_dict(keep, strict=False)
    return skipped
