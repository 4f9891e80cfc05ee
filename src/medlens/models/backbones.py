"""A registry network used as a feature extractor: the shared plumbing of hybrids and heads.

Hybrids (:mod:`.hybrids`) read a backbone's feature *map* as tokens; multi-task, fusion and
linear-probe heads (:mod:`.heads`) pool it. Both need the same three facts about a backbone —
its feature map in NCHW, the map's width, and how its own head pools — so they live here once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medlens.models.registry import create_model


def feature_backbone(name: str, in_chans: int, pretrained: bool | str | Path) -> nn.Module:
    """A network without its classifier whose ``forward_features`` gives B x C x H x W."""
    m = create_model(name, num_classes=0, in_chans=in_chans, pretrained=pretrained)
    if not hasattr(m, "forward_features"):
        raise ValueError(f"{name!r} has no forward_features: it cannot serve as a backbone")
    return m


def num_features(backbone: nn.Module, in_chans: int) -> int:
    n = getattr(backbone, "num_features", None)
    if isinstance(n, int) and n > 0:
        return n
    with torch.no_grad():
        return int(backbone.forward_features(torch.zeros(1, in_chans, 64, 64)).shape[1])


def feature_channels(backbone: nn.Module, in_chans: int) -> int:
    """Channels of the feature *map* (a hybrid's token width), which pooling may widen."""
    if getattr(backbone, "pool_type", None) is None:
        return num_features(backbone, in_chans)
    with torch.no_grad():
        return int(backbone.forward_features(torch.zeros(1, in_chans, 64, 64)).shape[1])


def pool(backbone: nn.Module, feat: torch.Tensor) -> torch.Tensor:
    """Pool a feature map the way the backbone's own head does (avg+max for ``small_cnn``),
    so the pooled width equals its ``num_features``; global average otherwise."""
    if getattr(backbone, "pool_type", None) is not None and feat.ndim == 4:
        return backbone.forward_head(feat, pre_logits=True)
    return feat.mean(dim=(2, 3)) if feat.ndim == 4 else feat[:, 0]


def to_nchw(feat: torch.Tensor) -> torch.Tensor:
    """timm's Swin/ConvNeXt variants may return NHWC; everything downstream wants NCHW."""
    if feat.ndim == 4 and feat.shape[1] < feat.shape[-1] and feat.shape[1] == feat.shape[2]:
        return feat.permute(0, 3, 1, 2)
    return feat
