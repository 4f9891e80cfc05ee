"""A small from-scratch CNN: the baseline every recipe can train in minutes on a CPU.

Three Conv-BN-ReLU-MaxPool stages, global pooling, dropout and a linear head. The default pooling
concatenates global average and global max: a small lesion anywhere in the field (a nodule, a
cavity) lifts the max even when the average over a large, normal-looking image barely moves. It follows
timm's conventions (``forward_features``, ``forward_head``, ``get_classifier``) so explanations and
linear probes treat it like any timm backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medlens.models.registry import register_model


class SmallCNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        dropout: float = 0.2,
        pool: str = "avgmax",
    ) -> None:
        super().__init__()
        if pool not in ("avg", "max", "avgmax"):
            raise ValueError(f"pool must be 'avg', 'max' or 'avgmax', got {pool!r}")
        layers: list[nn.Module] = []
        prev = in_chans
        for w in widths:
            layers += [
                nn.Conv2d(prev, w, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev = w
        self.features = nn.Sequential(*layers)
        self.pool_type = pool
        self.num_features = prev * (2 if pool == "avgmax" else 1)
        self.num_classes = num_classes
        self.drop = nn.Dropout(dropout)
        # num_classes=0: a feature extractor (a fusion encoder or a hybrid backbone), no head.
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "avg":
            x = x.mean(dim=(2, 3))
        elif self.pool_type == "max":
            x = x.amax(dim=(2, 3))
        else:
            x = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return x if pre_logits else self.head(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


@register_model("small_cnn")
def small_cnn(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool | str | Path = False,
    widths: Sequence[int] = (32, 64, 128),
    dropout: float = 0.2,
    pool: str = "avgmax",
) -> SmallCNN:
    model = SmallCNN(num_classes, in_chans, widths, dropout, pool)
    if pretrained is True:
        raise ValueError("small_cnn has no hub weights: give a local weights file or false")
    if pretrained:
        from medlens.models.weights import load_weights_file

        load_weights_file(model, Path(pretrained))
    return model
