"""CNN + sequence hybrids: a backbone's feature map read as a sequence of spatial tokens.

A timm (or medlens) backbone's final feature map is read as H×W spatial tokens (with a learned
2-D position embedding) by an LSTM, a bidirectional GRU or a Transformer encoder, pooled into
the head. Names are ``<backbone>+<lstm|bigru|gru|vit>``: the four the recipes use are registered
below, and any other ``backbone+reader`` name is built on demand by :func:`build_hybrid`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.models import backbones as bb
from medlens.models.registry import register_model


class _RNNReader(nn.Module):
    def __init__(self, dim: int, hidden: int, kind: str) -> None:
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "bigru": nn.GRU}[kind]
        self.rnn = cls(dim, hidden, batch_first=True, bidirectional=kind == "bigru")
        self.out_dim = hidden * (2 if kind == "bigru" else 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq, _ = self.rnn(tokens)
        return seq.mean(dim=1)  # every spatial token contributes, not only the last step


class _TransformerReader(nn.Module):
    def __init__(self, dim: int, hidden: int, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        layer = nn.TransformerEncoderLayer(hidden, heads, hidden * 2, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth)
        self.out_dim = hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.proj(tokens)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)[:, 0]


SEQUENCE_READERS: dict[str, Any] = {
    "lstm": lambda dim, hidden: _RNNReader(dim, hidden, "lstm"),
    "gru": lambda dim, hidden: _RNNReader(dim, hidden, "gru"),
    "bigru": lambda dim, hidden: _RNNReader(dim, hidden, "bigru"),
    "vit": lambda dim, hidden: _TransformerReader(dim, hidden),
}


class SequenceHybrid(nn.Module):
    """Backbone feature map → H×W spatial tokens (+ 2-D position) → sequence model → head.

    With a 7×7 map the reader sees 49 tokens, so attention or recurrence has something to relate;
    a single pooled token would leave it nothing to attend to.
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_chans: int,
        num_classes: int,
        reader: str,
        hidden: int = 128,
        max_grid: int = 32,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        dim = bb.feature_channels(backbone, in_chans)
        self.row_embed = nn.Parameter(torch.zeros(max_grid, dim))
        self.col_embed = nn.Parameter(torch.zeros(max_grid, dim))
        nn.init.trunc_normal_(self.row_embed, std=0.02)
        nn.init.trunc_normal_(self.col_embed, std=0.02)
        self.reader = SEQUENCE_READERS[reader](dim, hidden)
        self.num_features = self.reader.out_dim
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)
        self.max_grid = max_grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return bb.to_nchw(self.backbone.forward_features(x))

    def tokens(self, feat: torch.Tensor) -> torch.Tensor:
        _, c, h, w = feat.shape
        if h > self.max_grid or w > self.max_grid:
            raise ValueError(f"feature map {h}x{w} exceeds max_grid={self.max_grid}; raise it")
        pos = self.row_embed[:h, None, :] + self.col_embed[None, :w, :]  # H x W x C
        return feat.flatten(2).transpose(1, 2) + pos.reshape(h * w, c)

    def forward_head(self, feat: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = self.reader(self.tokens(feat))
        return z if pre_logits else self.head(self.drop(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


def build_hybrid(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool | str | Path = False,
    hidden: int = 128,
    **kw: Any,
) -> SequenceHybrid:
    backbone_name, _, reader = name.partition("+")
    if reader not in SEQUENCE_READERS:
        raise ValueError(
            f"unknown sequence reader {reader!r} in {name!r}: {sorted(SEQUENCE_READERS)}"
        )
    backbone = bb.feature_backbone(backbone_name, in_chans, pretrained)
    return SequenceHybrid(backbone, in_chans, num_classes, reader, hidden, **kw)


def _register_hybrid(name: str) -> None:
    register_model(name)(
        lambda num_classes, in_chans=3, pretrained=False, **kw: build_hybrid(
            name, num_classes, in_chans, pretrained, **kw
        )
    )


for _n in (
    "mobilenetv3_large_100+lstm",
    "efficientnet_b3+bigru",
    "efficientnet_b3+vit",
    "xception41+bigru",
):
    _register_hybrid(_n)
