"""The model zoo beyond plain timm classifiers: every network a diagnostic recipe asks for.

- **MedNeXt** (MONAI) used as a classifier: its encoder and bottleneck, global pooling, a head.
- **CNN + sequence hybrids**: a timm backbone's final feature map read as a sequence of H×W
  spatial tokens (with a learned 2-D position embedding) into an LSTM, a bidirectional GRU or a
  Transformer encoder, pooled into the head. Names are ``<timm backbone>+<lstm|bigru|gru|vit>``.
- **Multi-task heads** on any backbone: several classification and regression heads returning
  a dict of outputs (loss weights live in the recipe).
- **Dual-encoder fusion**: one encoder per modality, projections concatenated and normalised,
  shared heads; a missing modality is replaced by a learned placeholder, and modality dropout in
  training teaches the model to predict from either or both.
- **Linear probe**: a frozen backbone with a trainable linear head.
- **Attention U-Net** (MONAI) for segmentation.

MONAI is imported only inside the builders that need it (its import takes seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.models.registry import create_model, register_model


def _feature_backbone(name: str, in_chans: int, pretrained: bool | str | Path) -> nn.Module:
    """A network without its classifier whose ``forward_features`` gives B x C x H x W."""
    m = create_model(name, num_classes=0, in_chans=in_chans, pretrained=pretrained)
    if not hasattr(m, "forward_features"):
        raise ValueError(f"{name!r} has no forward_features: it cannot serve as a backbone")
    return m


def _num_features(backbone: nn.Module, in_chans: int) -> int:
    n = getattr(backbone, "num_features", None)
    if isinstance(n, int) and n > 0:
        return n
    with torch.no_grad():
        return int(backbone.forward_features(torch.zeros(1, in_chans, 64, 64)).shape[1])


def _feature_channels(backbone: nn.Module, in_chans: int) -> int:
    """Channels of the feature *map* (a hybrid's token width), which pooling may widen."""
    if getattr(backbone, "pool_type", None) is None:
        return _num_features(backbone, in_chans)
    with torch.no_grad():
        return int(backbone.forward_features(torch.zeros(1, in_chans, 64, 64)).shape[1])


def _pool(backbone: nn.Module, feat: torch.Tensor) -> torch.Tensor:
    """Pool a feature map the way the backbone's own head does (avg+max for ``small_cnn``),
    so the pooled width equals its ``num_features``; global average otherwise."""
    if getattr(backbone, "pool_type", None) is not None and feat.ndim == 4:
        return backbone.forward_head(feat, pre_logits=True)
    return feat.mean(dim=(2, 3)) if feat.ndim == 4 else feat[:, 0]


def _to_nchw(feat: torch.Tensor) -> torch.Tensor:
    """timm's Swin/ConvNeXt variants may return NHWC; everything downstream wants NCHW."""
    if feat.ndim == 4 and feat.shape[1] < feat.shape[-1] and feat.shape[1] == feat.shape[2]:
        return feat.permute(0, 3, 1, 2)
    return feat


# ---- CNN + sequence hybrids ---------------------------------------------------------------


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
        dim = _feature_channels(backbone, in_chans)
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
        return _to_nchw(self.backbone.forward_features(x))

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
    backbone = _feature_backbone(backbone_name, in_chans, pretrained)
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


# ---- multi-task heads -----------------------------------------------------------------------


class MultiTaskModel(nn.Module):
    """One backbone, several heads: ``{"class": 4, "stage": 4, "risk": "regression"}``.

    ``forward`` returns a dict of head outputs; ``primary`` names the head that a single-output
    caller (e.g. a CAM or the Predictor) reads by default.
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_chans: int,
        heads: dict[str, int | str],
        primary: str | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a multi-task model needs at least one head")
        self.backbone = backbone
        dim = _num_features(backbone, in_chans)
        self.num_features = dim
        self.drop = nn.Dropout(dropout)
        self.head_types = {
            k: ("regression" if v == "regression" else "classification") for k, v in heads.items()
        }
        self.heads = nn.ModuleDict(
            {k: nn.Linear(dim, 1 if v == "regression" else int(v)) for k, v in heads.items()}
        )
        self.primary = primary or next(iter(heads))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return _to_nchw(self.backbone.forward_features(x))

    def pooled(self, feat: torch.Tensor) -> torch.Tensor:
        return _pool(self.backbone, feat)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.drop(self.pooled(self.forward_features(x)))
        return {
            k: (h(z).squeeze(1) if self.head_types[k] == "regression" else h(z))
            for k, h in self.heads.items()
        }

    def get_classifier(self) -> nn.Module:
        return self.heads[self.primary]


@register_model("multitask", kind="multitask")
def multitask(
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    backbone: str = "resnet18",
    heads: dict[str, int | str] | None = None,
    primary: str | None = None,
    dropout: float = 0.2,
) -> MultiTaskModel:
    heads = dict(heads or {"class": num_classes})
    return MultiTaskModel(
        _feature_backbone(backbone, in_chans, pretrained), in_chans, heads, primary, dropout
    )


# ---- dual-encoder fusion --------------------------------------------------------------------


class FusionModel(nn.Module):
    """One encoder per modality → projections → concatenated, LayerNorm'd → shared heads.

    Input: a dict ``{modality: tensor or None}`` (``None`` = missing for the whole batch) and an
    optional ``present`` dict of per-sample boolean masks. A missing modality is replaced by a
    learned placeholder vector; during training each present modality is dropped with
    probability ``modality_dropout`` (never both for one sample), so the model learns to predict
    from either modality alone or from both.
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        in_chans: dict[str, int],
        heads: dict[str, int | str],
        proj_dim: int = 128,
        modality_dropout: float = 0.25,
        primary: str | None = None,
    ) -> None:
        super().__init__()
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.proj = nn.ModuleDict(
            {m: nn.Linear(_num_features(e, in_chans[m]), proj_dim) for m, e in encoders.items()}
        )
        self.placeholder = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(proj_dim)) for m in encoders}
        )
        self.norm = nn.LayerNorm(proj_dim * len(encoders))
        self.head_types = {
            k: ("regression" if v == "regression" else "classification") for k, v in heads.items()
        }
        self.heads = nn.ModuleDict(
            {
                k: nn.Linear(proj_dim * len(encoders), 1 if v == "regression" else int(v))
                for k, v in heads.items()
            }
        )
        self.modality_dropout = modality_dropout
        self.primary = primary or next(iter(heads))

    def _encode(self, m: str, x: torch.Tensor) -> torch.Tensor:
        feat = _to_nchw(self.encoders[m].forward_features(x))
        return self.proj[m](_pool(self.encoders[m], feat))

    def forward(
        self, inputs: dict[str, torch.Tensor | None], present: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        batch = next((v.shape[0] for v in inputs.values() if v is not None), None)
        if batch is None:
            raise ValueError("fusion needs at least one modality")
        device = next(self.parameters()).device
        masks = {}
        for m in self.modalities:
            x = inputs.get(m)
            if x is None:
                masks[m] = torch.zeros(batch, dtype=torch.bool, device=device)
            elif present is not None and m in present:
                masks[m] = present[m].to(device).bool()
            else:
                masks[m] = torch.ones(batch, dtype=torch.bool, device=device)
        if self.training and self.modality_dropout > 0 and len(self.modalities) > 1:
            both = torch.stack([masks[m] for m in self.modalities], 1).all(1)
            drop_which = torch.randint(len(self.modalities), (batch,), device=device)
            do_drop = both & (torch.rand(batch, device=device) < self.modality_dropout)
            for j, m in enumerate(self.modalities):
                masks[m] = masks[m] & ~(do_drop & (drop_which == j))
        parts = []
        for m in self.modalities:
            ph = self.placeholder[m].expand(batch, -1)
            x = inputs.get(m)
            if x is None:
                parts.append(ph)
                continue
            z = self._encode(m, x)
            parts.append(torch.where(masks[m][:, None], z, ph))
        h = self.norm(torch.cat(parts, dim=1))
        return {
            k: (head(h).squeeze(1) if self.head_types[k] == "regression" else head(h))
            for k, head in self.heads.items()
        }


@register_model("fusion", kind="fusion", inputs="modalities", cam="none")
def fusion(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool | str | Path = False,
    encoders: dict[str, str] | None = None,
    heads: dict[str, int | str] | None = None,
    proj_dim: int = 128,
    modality_dropout: float = 0.25,
    encoder_in_chans: dict[str, int] | None = None,
    primary: str | None = None,
) -> FusionModel:
    encoders = dict(encoders or {"ct": "resnet18", "mri": "resnet18"})
    chans = {m: (encoder_in_chans or {}).get(m, in_chans) for m in encoders}
    built = {m: _feature_backbone(n, chans[m], pretrained) for m, n in encoders.items()}
    return FusionModel(
        built, chans, dict(heads or {"class": num_classes}), proj_dim, modality_dropout, primary
    )


# ---- linear probe ---------------------------------------------------------------------------


class LinearProbe(nn.Module):
    """A frozen backbone (eval mode, no gradients) with a trainable linear head."""

    def __init__(self, backbone: nn.Module, in_chans: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.num_features = _num_features(backbone, in_chans)
        self.head = nn.Linear(self.num_features, num_classes)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # frozen means BatchNorm statistics stay frozen too
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return _to_nchw(self.backbone.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No torch.no_grad() here: the frozen parameters already get no gradient (so training
        # builds no graph through the backbone), and a CAM needs gradients at the activations.
        return self.head(_pool(self.backbone, self.forward_features(x)))

    def get_classifier(self) -> nn.Module:
        return self.head


@register_model("linear_probe")
def linear_probe(
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    backbone: str = "resnet18",
) -> LinearProbe:
    return LinearProbe(_feature_backbone(backbone, in_chans, pretrained), in_chans, num_classes)


# ---- MONAI networks -------------------------------------------------------------------------


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


class DiceBCELoss(nn.Module):
    """Dice + binary cross-entropy for binary masks (MONAI's DiceCELoss covers multi-class)."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        self.dice = monai_module("monai.losses").DiceLoss(sigmoid=True)
        self.bce = nn.BCEWithLogitsLoss()
        self.wd, self.wb = dice_weight, bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.wd * self.dice(logits, target) + self.wb * self.bce(logits, target.float())


def dice_iou(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> dict[str, float]:
    """Dice and IoU of thresholded sigmoid masks vs targets (MONAI's metrics, batch mean)."""
    metrics = monai_module("monai.metrics")
    compute_dice, compute_iou = metrics.compute_dice, metrics.compute_iou
    pred = (torch.sigmoid(logits) >= threshold).float()
    t = target.float()
    dice = compute_dice(pred, t, include_background=True, ignore_empty=False)
    iou = compute_iou(pred, t, include_background=True, ignore_empty=False)
    return {"dice": float(dice.nanmean()), "iou": float(iou.nanmean())}
