"""Segment first, then classify the segmented region: the sacroiliitis recipe's two-stage model.

A frozen segmenter (normally MONAI's Attention U-Net with one output channel, trained first by
:func:`medlens.train.segment.fit_segmentation`) predicts where the sacroiliac joints are; its
probability mask, dilated by a few pixels (segmentation is never perfect at the border, and the
subchondral bone next to the joint is where oedema shows), gates the image before a classifier
sees it. The classifier can be any registry model, including ``multitask`` (detection + stage
heads returning a dict).

The gate keeps the image's geometry: no cropping, no resizing. Everything outside the joint is
dimmed to ``floor`` of its value rather than cut away, so the classifier still has context and,
more importantly, a CAM computed through the wrapper is in the input's own pixel coordinates and
can be laid over the film and focused on the predicted joint (``medlens.explain.focus`` with
:attr:`RoiClassifier.last_mask`) directly.

Registered as ``roi_classifier``; the whole thing (segmenter included) is one state dict, so a
medlens bundle rebuilds it from ``(name, num_classes, in_chans, kwargs)`` and loads it strictly.
MONAI is imported only when an Attention U-Net is built (inside its builder in ``monai_nets``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medlens.models.registry import create_model, register_model

__all__ = ["DEFAULT_SEGMENTER", "RoiClassifier", "roi_classifier"]

# Small enough to train on a CPU in minutes; two poolings keep 32 px inputs valid.
DEFAULT_SEGMENTER: dict[str, Any] = {
    "name": "attention_unet",
    "kwargs": {"channels": [16, 32, 64], "strides": [2, 2]},
}
DEFAULT_CLASSIFIER: dict[str, Any] = {"name": "small_cnn", "kwargs": {}}


class RoiClassifier(nn.Module):
    """Frozen segmenter → dilated probability mask → gated image → classifier.

    ``forward(x) = classifier(x * (floor + (1 - floor) * dilate(sigmoid(segmenter(x)))))``.

    * The segmenter is frozen: its parameters have ``requires_grad=False`` and it stays in eval
      mode even when the wrapper is put in train mode (so BatchNorm/dropout inside it never
      change, and an optimiser given ``wrapper.parameters()`` cannot move it). Its mask is
      computed without autograd: the gate is a constant of the input as far as training is
      concerned, which also saves the U-Net's activation memory during training.
    * No cropping: the classifier sees an image of the input's size, so CAMs stay in image
      coordinates. ``last_mask`` (``B x 1 x H x W``, detached, the dilated mask of the latest
      forward) is what an explanation is focused on.
    * ``floor`` > 0 keeps some context outside the region (a bad mask then degrades the
      classifier instead of blinding it); ``floor=0`` is a hard gate.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        classifier: nn.Module,
        dilate: int = 7,
        floor: float = 0.1,
    ) -> None:
        super().__init__()
        if dilate < 1 or dilate % 2 == 0:
            raise ValueError(f"dilate must be an odd number of pixels >= 1, got {dilate}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        self.segmenter = segmenter
        self.classifier = classifier
        self.dilate = int(dilate)
        self.floor = float(floor)
        self.last_mask: torch.Tensor | None = None  # a plain attribute: not in the state dict
        self.freeze_segmenter()

    # -- the frozen segmenter ----------------------------------------------------------------

    def freeze_segmenter(self) -> None:
        """No gradients and eval mode for the segmenter (called again after loading weights)."""
        for p in self.segmenter.parameters():
            p.requires_grad_(False)
        self.segmenter.eval()

    def load_segmenter(self, source: nn.Module | dict[str, torch.Tensor]) -> RoiClassifier:
        """Copy trained segmenter weights in (a module or its state dict, strict) and refreeze.

        The usual sequence: ``fit_segmentation`` → ``create_model("roi_classifier", ...)`` with
        the same segmenter spec → ``load_segmenter(result.model)`` → train the classifier.
        """
        state = source.state_dict() if isinstance(source, nn.Module) else source
        self.segmenter.load_state_dict(state, strict=True)
        self.freeze_segmenter()
        return self

    def train(self, mode: bool = True) -> RoiClassifier:
        super().train(mode)
        self.segmenter.eval()  # frozen means its BatchNorm statistics stay frozen too
        return self

    # -- masks -------------------------------------------------------------------------------

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """The segmenter's probability mask ``B x 1 x H x W`` in [0, 1] (not dilated)."""
        with torch.no_grad():
            logits = self.segmenter(x)
        if isinstance(logits, list | tuple):  # deep-supervision outputs: the first is the mask
            logits = logits[0]
        if logits.ndim != 4 or logits.shape[1] != 1:
            raise ValueError(
                f"the segmenter must return B x 1 x H x W logits, got {tuple(logits.shape)}"
            )
        if logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"the segmenter output {tuple(logits.shape[-2:])} does not match the input "
                f"{tuple(x.shape[-2:])}; choose strides that divide the image size"
            )
        return torch.sigmoid(logits.float()).to(x.dtype)

    def roi_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The dilated probability mask that gates the classifier's input."""
        mask = self.segment(x)
        if self.dilate > 1:
            mask = F.max_pool2d(mask, self.dilate, stride=1, padding=self.dilate // 2)
        return mask

    # -- classification ----------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> Any:
        mask = self.roi_mask(x)
        self.last_mask = mask.detach()
        gate = self.floor + (1.0 - self.floor) * mask
        return self.classifier(x * gate)

    @property
    def primary(self) -> str:
        """The classifier's primary head (multi-task classifiers only; AttributeError otherwise)."""
        if not hasattr(self.classifier, "primary"):
            raise AttributeError(f"{type(self.classifier).__name__} has no primary head")
        return str(self.classifier.primary)

    @property
    def head_types(self) -> dict[str, str]:
        """The classifier's head types (multi-task classifiers only; AttributeError otherwise)."""
        if not hasattr(self.classifier, "head_types"):
            raise AttributeError(f"{type(self.classifier).__name__} has no head_types")
        return dict(self.classifier.head_types)

    def get_classifier(self) -> nn.Module:
        return self.classifier.get_classifier()


def _spec(value: dict[str, Any] | None, default: dict[str, Any], role: str) -> tuple[str, dict]:
    spec = dict(default if value is None else value)
    unknown = set(spec) - {"name", "kwargs"}
    if unknown or "name" not in spec:
        raise ValueError(
            f"roi_classifier {role}: give {{'name': ..., 'kwargs': {{...}}}} only (got keys "
            f"{sorted(spec)}); trained segmenter weights go in with RoiClassifier.load_segmenter "
            "or travel inside the bundle, never as a file path in the spec"
        )
    return str(spec["name"]), dict(spec.get("kwargs") or {})


@register_model("roi_classifier", kind="roi")
def roi_classifier(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool | str | Path = False,
    segmenter: dict[str, Any] | None = None,
    classifier: dict[str, Any] | None = None,
    dilate: int = 7,
    floor: float = 0.1,
) -> RoiClassifier:
    """Build a :class:`RoiClassifier` from two registry specs ``{"name": ..., "kwargs": {...}}``.

    Defaults: an Attention U-Net with channels (16, 32, 64) and strides (2, 2), one output
    channel; a ``small_cnn`` classifier. ``pretrained`` applies to the classifier only (hub
    weights for its backbone); the segmenter is built untrained and gets its weights from
    :meth:`RoiClassifier.load_segmenter` or, when rebuilt from a bundle, from the bundle's one
    state dict.
    """
    seg_name, seg_kwargs = _spec(segmenter, DEFAULT_SEGMENTER, "segmenter")
    cls_name, cls_kwargs = _spec(classifier, DEFAULT_CLASSIFIER, "classifier")
    seg = create_model(seg_name, num_classes=1, in_chans=in_chans, pretrained=False, **seg_kwargs)
    clf = create_model(
        cls_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **cls_kwargs
    )
    return RoiClassifier(seg, clf, dilate=dilate, floor=floor)
