"""Where a heatmap is read from: the target layer, its reshape, and which output is explained.

Grad-CAM-style methods weight the activations of one layer by the gradient of one output. The
layer must be the last one that still has a spatial layout the head depends on; choosing it by
hand per model is how heatmaps end up read from the wrong place (a 1 x 1 pooled map, a
transformer block whose patch tokens the head ignores). :func:`resolve_target_layer` makes the
choice once per model family, by rule, and falls back to a forward-hook probe for anything else.

Transformers emit tokens, not maps. :class:`TokenReshape` turns ``B x N x C`` tokens (dropping the
model's own count of class/distillation tokens) or ``B x H x W x C`` (Swin, channels last) into
``B x C x H x W``; the grid comes from the model's ``patch_embed.grid_size`` when it matches the
token count, otherwise from the token count and the input's aspect ratio, never a fixed 14 x 14.

:class:`OutputSelect` lets a model whose ``forward`` returns a dict or a tuple (several heads) be
explained one head at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medlens.errors import MedlensError
from medlens.models.registry import model_info

__all__ = [
    "MIN_CAM_SIDE",
    "ExplainError",
    "LayerChoice",
    "OutputSelect",
    "TokenReshape",
    "module_name",
    "probe_last_spatial_layer",
    "resolve_target_layer",
]


class ExplainError(MedlensError):
    """An explanation cannot be computed as asked (bad layer, class, head or input)."""


class OutputSelect(nn.Module):
    """Wrap a model so that its forward returns one tensor of logits.

    ``head=None`` passes a tensor output through (and refuses a dict/tuple, naming the heads);
    a string picks a dict key, an integer a tuple/list position. The wrapped model's modules are
    untouched, so target layers found on the inner model receive the library's hooks as usual.
    """

    def __init__(self, model: nn.Module, head: str | int | None = None) -> None:
        super().__init__()
        self.model = model
        # A multi-head model names the head its class probabilities come from (``primary``).
        self.head = head if head is not None else getattr(model, "primary", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return select_output(out, self.head)


def select_output(out: Any, head: str | int | None) -> torch.Tensor:
    """The logits tensor named by ``head`` inside a model's output (see :class:`OutputSelect`)."""
    if isinstance(out, torch.Tensor):
        if head not in (None, 0):
            raise ExplainError(f"head={head!r} given but the model returns a single tensor")
        return out
    if isinstance(out, dict):
        if head is None:
            raise ExplainError(
                f"the model returns several outputs {sorted(map(str, out))}; pick one with head="
            )
        if head not in out:
            raise ExplainError(f"head={head!r} is not an output; outputs: {sorted(map(str, out))}")
        picked = out[head]
    elif isinstance(out, tuple | list):
        if head is None:
            raise ExplainError(
                f"the model returns {len(out)} outputs; pick one with head=0..{len(out) - 1}"
            )
        if not isinstance(head, int) or not -len(out) <= head < len(out):
            raise ExplainError(f"head={head!r} is not an index into {len(out)} outputs")
        picked = out[head]
    else:
        raise ExplainError(f"cannot explain a model output of type {type(out).__name__}")
    if not isinstance(picked, torch.Tensor):
        raise ExplainError(f"output {head!r} is a {type(picked).__name__}, not a logits tensor")
    return picked


class TokenReshape:
    """``reshape_transform`` for pytorch-grad-cam: transformer activations to ``B x C x H x W``.

    * 4-D input is channels-last ``B x H x W x C`` (timm's Swin) when ``channels_last`` and is
      permuted; otherwise it is already a map and passes through (a conv layer of a ViT);
    * 3-D ``B x N x C`` tokens lose the first ``num_prefix_tokens`` (class / distillation
      tokens) and the rest are laid out on the patch grid.

    The grid is ``grid_size`` when its product equals the remaining token count (the model's own
    ``patch_embed.grid_size``), otherwise derived from the token count and ``input_hw`` (square
    inputs: ``sqrt(N)``); a count that fits no grid is an error, not a guess.
    """

    def __init__(
        self,
        num_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
        input_hw: tuple[int, int] | None = None,
        channels_last: bool = False,
    ) -> None:
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.channels_last = channels_last
        self.grid_size = tuple(int(v) for v in grid_size) if grid_size is not None else None
        self.input_hw = input_hw

    def grid(self, n_tokens: int) -> tuple[int, int]:
        if self.grid_size is not None and self.grid_size[0] * self.grid_size[1] == n_tokens:
            return self.grid_size[0], self.grid_size[1]
        h_in, w_in = self.input_hw or (1, 1)
        h = round(math.sqrt(n_tokens * h_in / w_in))
        for cand in (h, h - 1, h + 1):
            if cand > 0 and n_tokens % cand == 0:
                return cand, n_tokens // cand
        raise ExplainError(
            f"{n_tokens} patch tokens do not form a grid for an input of {h_in} x {w_in}"
        )

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 4:
            return t.permute(0, 3, 1, 2) if self.channels_last else t
        if t.ndim != 3:
            raise ExplainError(f"expected B x N x C tokens, got shape {tuple(t.shape)}")
        tokens = t[:, self.num_prefix_tokens :, :]
        h, w = self.grid(tokens.shape[1])
        return tokens.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


@dataclass
class LayerChoice:
    """The layer a heatmap is read from, how it was chosen, and its reshape (if any)."""

    layer: nn.Module
    name: str
    rule: str
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """Dotted name of ``layer`` inside ``model`` (``"<model>"`` for the model itself)."""
    for name, mod in model.named_modules():
        if mod is layer:
            return name or "<model>"
    raise ExplainError(f"target layer {type(layer).__name__} is not a module of the model")


def _classes(model: nn.Module) -> set[str]:
    return {c.__name__ for c in type(model).__mro__}


def _vit_layer(m: nn.Module) -> nn.Module:
    # With class-token pooling the head reads only the class token, so the last block's output
    # carries no gradient at the patch tokens; read the last block's input (norm1) instead.
    # Average-pooled ViTs depend on every token at the end: the final norm is the last map.
    if getattr(m, "global_pool", "token") == "token" and getattr(m, "num_prefix_tokens", 0):
        return m.blocks[-1].norm1
    return m.norm


# Family rules: (class name in the model's MRO, layer picker, layout). Layouts: "nchw" (plain
# feature map), "tokens" (B x N x C with prefix tokens), "nhwc" (channels-last map).
_RULES: tuple[tuple[str, Callable[[nn.Module], nn.Module], str], ...] = (
    ("SmallCNN", lambda m: m.features, "nchw"),
    ("ResNet", lambda m: m.layer4[-1], "nchw"),
    ("ConvNeXt", lambda m: m.stages[-1], "nchw"),
    ("MobileNetV3", lambda m: m.blocks[-1], "nchw"),  # conv_head runs after pooling (1 x 1)
    ("EfficientNet", lambda m: m.bn2, "nchw"),
    ("DenseNet", lambda m: m.features, "nchw"),  # ends with norm5 + activation
    ("XceptionAligned", lambda m: m.act, "nchw"),
    ("Xception", lambda m: m.act4, "nchw"),
    ("SwinTransformer", lambda m: m.norm, "nhwc"),  # avg-pooled: the final map is the CAM map
    ("SwinTransformerV2", lambda m: m.norm, "nhwc"),
    ("VisionTransformer", _vit_layer, "tokens"),
)


#: the probe prefers a map at least this many cells on each side: a heat map read from a 2 x 2
#: map (a ResNet's last stage at 64 px) cannot point at a lesion, so an earlier stage is read
MIN_CAM_SIDE = 8


def probe_last_spatial_layer(
    model: nn.Module, x: torch.Tensor, min_side: int = MIN_CAM_SIDE
) -> tuple[nn.Module, str]:
    """The last module (in completion order) whose output is an ``N x C x H x W`` map at least
    ``min_side`` cells on each side (fine enough to point at a lesion).

    One no-grad forward with a hook on every submodule. When no map is that fine, the last map
    larger than 1 x 1 (global pooling) is used; if nothing larger exists, the last 4-D output.
    A container's hook fires after its children's, so a stage is preferred over its own last
    block: same tensor.
    """
    seen: list[tuple[nn.Module, tuple[int, ...]]] = []

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            seen.append((mod, tuple(out.shape)))

    handles = [m.register_forward_hook(hook) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ExplainError(
            f"{type(model).__name__} produces no 4-D feature map; give target_layer= explicitly"
        )
    spatial = [s for s in seen if s[1][2] * s[1][3] > 1]
    fine = [s for s in spatial if min(s[1][2], s[1][3]) >= min(min_side, x.shape[-2], x.shape[-1])]
    layer, _ = (fine or spatial or seen)[-1]
    return layer, module_name(model, layer)


def _resolve_in_ensemble(
    model: nn.Module, x: torch.Tensor, target_layer: nn.Module | str | None
) -> LayerChoice:
    """A soft-voting ensemble is explained through one member's layer.

    By default the dominant (highest-weight, first on ties) member; with an explicit layer, the
    member holding it. The gradient is still that of the ensemble's output, but it reaches the
    chosen layer only through that member: the heat map shows where the dominant member looks,
    not a "vote" of heat maps, which the CAM library does not define. The member's own family
    rule (and token reshape) applies, so a ViT member is read as a ViT would be.
    """
    layer = target_layer
    if isinstance(layer, str):
        try:
            layer = model.get_submodule(layer)
        except AttributeError:
            raise ExplainError(f"target_layer {layer!r} is not a module of the model") from None
    members = list(model.members)
    if layer is None:
        i = int(model.dominant_member())
        how = f"dominant ensemble member {model.labels[i]!r} (weight {model.weights[i]:.3f})"
    else:
        found = [j for j, m in enumerate(members) if any(s is layer for s in m.modules())]
        if not found:
            raise ExplainError("an ensemble's target_layer must lie inside one of its members")
        i = found[0]
        how = f"ensemble member {model.labels[i]!r}"
    inner = resolve_target_layer(members[i], x, layer)
    return LayerChoice(
        inner.layer,
        module_name(model, inner.layer),
        f"{how}; {inner.rule}",
        inner.reshape_transform,
    )


def resolve_target_layer(
    model: nn.Module,
    x: torch.Tensor,
    target_layer: nn.Module | str | None = None,
) -> LayerChoice:
    """Pick the layer to read a heatmap from (see the module docstring).

    ``target_layer`` may be a module of ``model`` or its dotted name (``"layer4.1"``); token
    models get their :class:`TokenReshape` either way. ``x`` (``1 x C x H x W``) sizes the token
    grid and drives the fallback probe. A model whose registry entry says ``cam="member"`` (a
    soft-voting ensemble) resolves to its dominant member's layer (see
    :func:`_resolve_in_ensemble`).
    """
    if model_info(model).cam == "member":
        return _resolve_in_ensemble(model, x, target_layer)
    names = _classes(model)
    layout = "nchw"
    rule = "explicit"
    layer: nn.Module | None = None
    for cls_name, pick, lay in _RULES:
        if cls_name in names:
            layout = lay
            if target_layer is None:
                try:
                    layer, rule = pick(model), f"family rule: {cls_name}"
                except (AttributeError, IndexError, TypeError):
                    layer = None
            break
    if isinstance(target_layer, str):
        try:
            layer = model.get_submodule(target_layer)
        except AttributeError:
            raise ExplainError(
                f"target_layer {target_layer!r} is not a module of the model"
            ) from None
    elif target_layer is not None:
        layer = target_layer
    if layer is None:
        layer, _ = probe_last_spatial_layer(model, x)
        rule = f"probe: last module with a 4-D output at least {MIN_CAM_SIDE} cells a side"
        layout = "nchw"
    reshape: TokenReshape | None = None
    if layout == "tokens":
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        reshape = TokenReshape(
            num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
            grid_size=tuple(grid) if grid is not None else None,
            input_hw=(int(x.shape[-2]), int(x.shape[-1])),
        )
    elif layout == "nhwc":
        reshape = TokenReshape(input_hw=(int(x.shape[-2]), int(x.shape[-1])), channels_last=True)
    return LayerChoice(layer, module_name(model, layer), rule, reshape)
