"""Per-modality heatmaps of a fusion model's *fused* decision, and what each modality contributed.

A fusion model (one encoder per modality, see :class:`medlens.models.heads.FusionModel`) takes a
dict of images, which the CAM library cannot hook as one input. Each modality is explained on its
own: a small wrapper module takes that modality's tensor and closes over the others, so the
library's CAM runs unchanged on the wrapper, reads the modality's **own encoder's** last spatial
layer (the encoder's family rule from :mod:`.targets`) and takes gradients of the **fused**
output. The map therefore answers "where in this CT did the fused decision look", not what a
CT-only model would say.

How much each modality mattered is measured, not inferred from the maps (whose scales are each
normalised to [0, 1] and cannot be compared): the modality is withheld - the model's learned
placeholder replaces its features, exactly as when it is missing at inference - and the drop in
the explained class's probability is the modality's contribution. A negative drop means the
modality argued *against* the class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.explain.cam import compute_cam, normalise_method
from medlens.explain.targets import ExplainError, LayerChoice, resolve_target_layer, select_output
from medlens.models.registry import model_info

__all__ = [
    "FusionExplanation",
    "ModalityExplanation",
    "OneModality",
    "explain_modalities",
    "modality_contributions",
]

Inputs = Mapping[str, torch.Tensor | None]


class OneModality(nn.Module):
    """The fusion model seen as a function of one modality's tensor (the others held fixed).

    ``forward(x)`` feeds ``{modality: x, **others}`` to the fusion model and returns the logits of
    ``head`` (default: the model's primary head). The other inputs are expanded to ``x``'s batch
    size, so the library's batched tricks (augmentation smoothing, SmoothGrad copies, ScoreCAM)
    see the same companion images for every copy.
    """

    def __init__(self, model: nn.Module, inputs: Inputs, modality: str, head: str | None) -> None:
        super().__init__()
        self.model = model
        self.modality = modality
        self.others = {m: v for m, v in inputs.items() if m != modality}
        self.head = head if head is not None else getattr(model, "primary", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        feed: dict[str, torch.Tensor | None] = {
            m: (None if v is None else v.expand(n, *v.shape[1:])) for m, v in self.others.items()
        }
        feed[self.modality] = x
        return select_output(self.model(feed), self.head)


@dataclass
class ModalityExplanation:
    """One modality of one fused decision.

    ``cam``: ``H x W`` float32 in [0, 1] at that modality's input size (None: not given).
    ``layer``: the dotted layer name inside the fusion model, ``layer_rule`` how it was chosen.
    ``probability_without``: the explained class's probability with this modality withheld
    (its learned placeholder in its place); ``contribution`` = probability with every given
    modality minus that (None when the modality was not given: there is nothing to withhold).
    """

    modality: str
    given: bool
    cam: np.ndarray | None = None
    layer: str | None = None
    layer_rule: str | None = None
    probability_without: float | None = None
    contribution: float | None = None
    note: str | None = None

    def summary(self) -> dict[str, Any]:
        """Everything but the map (for JSON)."""
        return {
            "modality": self.modality,
            "given": self.given,
            "layer": self.layer,
            "layer_rule": self.layer_rule,
            "probability_without": self.probability_without,
            "contribution": self.contribution,
            "note": self.note,
        }


@dataclass
class FusionExplanation:
    """Per-modality heatmaps of one fused decision: ``target_class`` with ``probability`` (all
    given modalities present, softmax at ``temperature``), explained by ``method``."""

    method: str
    target_class: int
    probability: float
    temperature: float
    modalities: dict[str, ModalityExplanation] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target_class": self.target_class,
            "probability": self.probability,
            "temperature": self.temperature,
            "modalities": {m: e.summary() for m, e in self.modalities.items()},
        }


def _check_fusion(model: nn.Module) -> list[str]:
    info = model_info(model)
    if info.inputs != "modalities":
        raise ExplainError(
            f"per-modality heatmaps need a multi-input (fusion) model; this is a {info.kind} "
            "model taking one image: explain it with medlens.explain.explain"
        )
    mods = list(getattr(model, "modalities", []) or [])
    encoders = getattr(model, "encoders", None)
    if not mods or encoders is None:
        raise ExplainError(f"{type(model).__name__} names no modalities / encoders to explain")
    return mods


def _batch(inputs: Inputs, mods: list[str], device: torch.device) -> dict[str, torch.Tensor | None]:
    unknown = sorted(set(inputs) - set(mods))
    if unknown:
        raise ExplainError(f"unknown modalities {unknown}; this model takes {mods}")
    out: dict[str, torch.Tensor | None] = {}
    for m in mods:
        v = inputs.get(m)
        if v is None:
            out[m] = None
            continue
        t = torch.as_tensor(v).float()
        t = t[None] if t.ndim == 3 else t
        if t.ndim != 4 or t.shape[0] != 1:
            raise ExplainError(
                f"modality {m!r}: explain takes one image as 1 x C x H x W, got {tuple(t.shape)}"
            )
        out[m] = t.detach().to(device)
    if all(v is None for v in out.values()):
        raise ExplainError(f"no image given: this model takes one or more of {mods}")
    return out


def _probs(
    model: nn.Module,
    feed: dict[str, torch.Tensor | None],
    head: str | None,
    temperature: float,
    withheld: str | None = None,
) -> np.ndarray:
    """Class probabilities of one fused forward; ``withheld``: that modality's placeholder is
    used in place of its features (its ``present`` flag set to False), as for a missing image."""
    present = None
    if withheld is not None and feed.get(withheld) is not None:
        present = {withheld: torch.zeros(1, dtype=torch.bool, device=feed[withheld].device)}
    with torch.no_grad():
        logits = select_output(model(feed, present), head or getattr(model, "primary", None))
    return torch.softmax(logits.float() / float(temperature), 1)[0].cpu().numpy()


def modality_contributions(
    model: nn.Module,
    inputs: Inputs,
    target_class: int | None = None,
    *,
    head: str | None = None,
    temperature: float = 1.0,
) -> tuple[int, float, dict[str, float | None]]:
    """``(class, probability, {modality: drop when withheld})`` for one case (eval mode).

    The drop is ``p(class | all given) - p(class | this one withheld)``; None for a modality that
    was not given.
    """
    mods = _check_fusion(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    feed = _batch(inputs, mods, device)
    was = model.training
    model.eval()
    try:
        p_all = _probs(model, feed, head, temperature)
        cls = int(np.argmax(p_all)) if target_class is None else int(target_class)
        if not 0 <= cls < p_all.shape[0]:
            raise ExplainError(f"target_class {target_class} is outside 0..{p_all.shape[0] - 1}")
        drops: dict[str, float | None] = {}
        for m in mods:
            if feed[m] is None:
                drops[m] = None
                continue
            drops[m] = float(p_all[cls] - _probs(model, feed, head, temperature, withheld=m)[cls])
    finally:
        model.train(was)
    return cls, float(p_all[cls]), drops


def explain_modalities(
    model: nn.Module,
    inputs: Inputs,
    method: str = "gradcam++",
    target_class: int | None = None,
    *,
    head: str | None = None,
    temperature: float = 1.0,
    target_layers: Mapping[str, nn.Module | str] | None = None,
    maps: bool = True,
    **opts: Any,
) -> FusionExplanation:
    """A heatmap per given modality for the fused decision, with each modality's contribution.

    ``inputs``: ``{modality: 1 x C x H x W tensor or None}`` (preprocessed; None = not given).
    ``target_class``: the class explained (default: the fused top class). ``target_layers``:
    per modality a layer (module or dotted name inside that modality's encoder) instead of the
    encoder's family rule. ``opts`` go to :func:`~medlens.explain.cam.compute_cam`
    (``aug_smooth``, ``n_samples``...). ``temperature`` scales the probabilities reported
    (a bundle's calibration); it does not change the maps. ``maps=False``: the contributions
    only (forward passes, no CAM), e.g. when the maps are already drawn and cached.
    """
    name = normalise_method(method)
    mods = _check_fusion(model)
    cls, p_all, drops = modality_contributions(
        model, inputs, target_class, head=head, temperature=temperature
    )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    feed = _batch(inputs, mods, device)
    out = FusionExplanation(name, cls, p_all, float(temperature))
    for m in mods:
        x = feed[m]
        if x is None:
            out.modalities[m] = ModalityExplanation(
                m, False, note=f"{m} not given: the model used its learned placeholder"
            )
            continue
        drop = drops[m]
        p_without = None if drop is None else p_all - drop
        if not maps:
            out.modalities[m] = ModalityExplanation(
                m, True, probability_without=p_without, contribution=drop
            )
            continue
        encoder = model.encoders[m]
        inner = resolve_target_layer(encoder, x, (target_layers or {}).get(m))
        choice = LayerChoice(
            inner.layer,
            f"encoders.{m}.{inner.name}",
            f"{m} encoder: {inner.rule}",
            inner.reshape_transform,
        )
        res = compute_cam(OneModality(model, feed, m, head), x, name, cls, choice, **opts)
        out.modalities[m] = ModalityExplanation(
            m,
            True,
            res.cam,
            choice.name,
            choice.rule,
            p_without,
            drop,
            None if res.cam.any() else "flat map: no region of this image raised the class score",
        )
    return out
