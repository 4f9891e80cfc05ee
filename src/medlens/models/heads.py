"""Heads on registry backbones: multi-task, dual-encoder fusion and the linear probe.

- **Multi-task heads** on any backbone: several classification and regression heads returning
  a dict of outputs (loss weights live in the recipe).
- **Dual-encoder fusion**: one encoder per modality, projections concatenated and normalised,
  shared heads; a missing modality is replaced by a learned placeholder, and modality dropout in
  training teaches the model to predict from either or both.
- **Linear probe**: a frozen backbone with a trainable linear head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medlens.models import backbones as bb
from medlens.models.registry import register_model


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
        dim = bb.num_features(backbone, in_chans)
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
        return bb.to_nchw(self.backbone.forward_features(x))

    def pooled(self, feat: torch.Tensor) -> torch.Tensor:
        return bb.pool(self.backbone, feat)

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
        bb.feature_backbone(backbone, in_chans, pretrained), in_chans, heads, primary, dropout
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
            {m: nn.Linear(bb.num_features(e, in_chans[m]), proj_dim) for m, e in encoders.items()}
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
        feat = bb.to_nchw(self.encoders[m].forward_features(x))
        return self.proj[m](bb.pool(self.encoders[m], feat))

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


@register_model("fusion", kind="fusion", inputs="modalities", cam="modalities")
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
    built = {m: bb.feature_backbone(n, chans[m], pretrained) for m, n in encoders.items()}
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
        self.num_features = bb.num_features(backbone, in_chans)
        self.head = nn.Linear(self.num_features, num_classes)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # frozen means BatchNorm statistics stay frozen too
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return bb.to_nchw(self.backbone.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No torch.no_grad() here: the frozen parameters already get no gradient (so training
        # builds no graph through the backbone), and a CAM needs gradients at the activations.
        return self.head(bb.pool(self.backbone, self.forward_features(x)))

    def get_classifier(self) -> nn.Module:
        return self.head


@register_model("linear_probe")
def linear_probe(
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    backbone: str = "resnet18",
) -> LinearProbe:
    return LinearProbe(bb.feature_backbone(backbone, in_chans, pretrained), in_chans, num_classes)
