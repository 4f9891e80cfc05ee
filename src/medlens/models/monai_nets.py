"""MONAI networks: MedNeXt used as a classifier, and the Attention U-Net segmenter.

MONAI is imported only inside the builders that need it (its import takes seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.models.registry import register_model


def monai_module(name: str) -> Any:
    """Import a MONAI sub-module (the ``monai`` extra), or say how to install it."""
    from medlens.errors import require

    return require(name, "monai")


class MedNeXtClassifier(nn.Module):
    """MONAI's MedNeXt encoder (stem, encoder stages, bottleneck) + global pooling + a head."""

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        init_filters: int = 16,
        blocks_down: Sequence[int] = (2, 2, 2, 2),
        blocks_bottleneck: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        net = monai_module("monai.networks.nets").MedNeXt(
            spatial_dims=2,
            init_filters=init_filters,
            in_channels=in_chans,
            out_channels=num_classes,
            blocks_down=tuple(blocks_down),
            blocks_bottleneck=blocks_bottleneck,
            blocks_up=tuple(blocks_down),
            kernel_size=kernel_size,
        )
        # Keep the encoder only; the decoder is for segmentation and would be dead weight here.
        self.stem, self.enc_stages = net.stem, net.enc_stages
        self.down_blocks, self.bottleneck = net.down_blocks, net.bottleneck
        self.num_features = init_filters * 2 ** len(tuple(blocks_down))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage, down in zip(self.enc_stages, self.down_blocks, strict=True):
            x = down(stage(x))
        return self.bottleneck(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.forward_features(x).mean(dim=(2, 3))))

    def get_classifier(self) -> nn.Module:
        return self.head


@register_model("mednext")
def mednext(
    num_classes: int, in_chans: int = 1, pretrained: bool | str | Path = False, **kw: Any
) -> MedNeXtClassifier:
    model = MedNeXtClassifier(num_classes, in_chans, **kw)
    if pretrained:
        if pretrained is True:
            raise ValueError("mednext has no hub weights here: give a local weights file or false")
        from medlens.models.weights import load_weights_file

        load_weights_file(model, Path(pretrained))
    return model


@register_model("attention_unet", kind="segmentation")
def attention_unet(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool | str | Path = False,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI Attention U-Net: ``num_classes`` output channels (1 for a binary mask)."""
    model = monai_module("monai.networks.nets").AttentionUnet(
        spatial_dims=2,
        in_channels=in_chans,
        out_channels=num_classes,
        channels=tuple(channels),
        strides=tuple(strides),
        dropout=dropout,
    )
    if pretrained and pretrained is not True:
        from medlens.models.weights import load_weights_file

        load_weights_file(model, Path(pretrained))
    return model
