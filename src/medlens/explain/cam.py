"""Heatmaps through pytorch-grad-cam: one call, one image, hooks released before returning.

The CAM algorithms are the library's (GradCAM, GradCAMPlusPlus, HiResCAM, EigenCAM, LayerCAM,
ScoreCAM, its ``aug_smooth`` test-time augmentation); this module only chooses the layer and
the target (:mod:`.targets`), fixes the class explained, and adds SmoothGrad-CAM++ (Grad-CAM++
averaged over noisy copies of the input), which the library does not ship.

Every call builds the library's CAM object in its ``with`` form, so the forward hooks it
registers are removed when the call ends, even on error; a long-running server explaining
thousands of images therefore accumulates neither hooks nor activations. The model's
train/eval flags are restored afterwards and no parameter gradients are left behind.
"""

from __future__ import annotations

import contextlib
import difflib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.common import rescale_to_unit
from medlens.explain.targets import (
    ExplainError,
    LayerChoice,
    OutputSelect,
    resolve_target_layer,
)

__all__ = ["METHODS", "CamResult", "compute_cam", "explain", "normalise_method"]

# Our names -> pytorch-grad-cam class names. "smoothgradcam++" is built on GradCAMPlusPlus.
_LIBRARY_CLASS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "smoothgradcam++": "GradCAMPlusPlus",
}
METHODS: tuple[str, ...] = tuple(_LIBRARY_CLASS)
_ALIASES = {"gradcampp": "gradcam++", "smoothgradcampp": "smoothgradcam++"}


def normalise_method(method: str) -> str:
    """Canonical method name (``"Grad-CAM++"`` -> ``"gradcam++"``) or a helpful error."""
    key = str(method).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key in _LIBRARY_CLASS:
        return key
    close = difflib.get_close_matches(key, METHODS, n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ExplainError(
        f"unknown explanation method {method!r}.{hint} Methods: {', '.join(METHODS)}"
    )


@dataclass
class CamResult:
    """A heatmap and what it explains.

    ``cam``: float32 ``H x W`` in [0, 1] at input resolution; all zeros when no region raised
    the class score (Grad-CAM's ReLU removes every negative contribution): a flat map, which the
    localisation scorer skips and counts rather than scores. ``target_class``: the output index
    explained. ``layer``: dotted name of the layer the map was read from and ``layer_rule`` how it
    was chosen. ``probability``: softmax probability of ``target_class`` on the clean input.
    """

    cam: np.ndarray
    method: str
    target_class: int
    layer: str
    layer_rule: str
    probability: float
    options: dict[str, Any] = field(default_factory=dict)


def _as_batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[0] != 1:
        raise ExplainError(f"explain takes one image as 1 x C x H x W, got shape {tuple(t.shape)}")
    return t.float()


def _normalise(cam: np.ndarray) -> np.ndarray:
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if cam.size == 0:
        return cam
    return rescale_to_unit(cam, float(cam.min()), float(cam.max()))  # flat map → zeros


def compute_cam(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    method: str = "gradcam++",
    target_class: int | None = None,
    target_layer: nn.Module | str | LayerChoice | None = None,
    head: str | int | None = None,
    *,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    n_samples: int = 8,
    noise: float = 0.1,
    seed: int = 0,
    batch_size: int = 16,
) -> CamResult:
    """Heatmap of ``model`` for one image ``x`` (``1 x C x H x W``, preprocessed) with details.

    ``method``: one of :data:`METHODS`. ``target_class``: the output explained (default: the
    model's top class on ``x``). ``target_layer``: a module or dotted name (default: resolved per
    model family), or a :class:`LayerChoice` already resolved (a fusion model's wrapper, whose
    layer lives in one encoder and keeps that encoder's reshape). ``head``: which output of a dict/tuple-returning model (default: the model's
    ``primary`` head, the one its class probabilities come from). ``aug_smooth`` /
    ``eigen_smooth``: the library's flags. ``n_samples`` / ``noise`` / ``seed``: SmoothGrad-CAM++
    copies and their Gaussian noise std as a fraction of the input's value range.
    ``batch_size``: images per forward for ScoreCAM and SmoothGrad-CAM++.
    """
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    name = normalise_method(method)
    if name == "smoothgradcam++" and (n_samples < 1 or noise < 0):
        raise ExplainError("smoothgradcam++ needs n_samples >= 1 and noise >= 0")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    xb = _as_batch(x).to(device)
    wrapped = OutputSelect(model, head)
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.inference_mode(False), torch.enable_grad():
            xb = xb.detach().clone()
            model.eval()
            with torch.no_grad():
                logits = wrapped(xb)
            if logits.ndim != 2 or logits.shape[0] != 1:
                raise ExplainError(f"expected 1 x K logits, got shape {tuple(logits.shape)}")
            k = int(logits.shape[1])
            cls = int(logits.argmax(1).item()) if target_class is None else int(target_class)
            if not 0 <= cls < k:
                raise ExplainError(f"target_class {target_class} is outside 0..{k - 1}")
            prob = float(torch.softmax(logits.float(), 1)[0, cls])
            choice = (
                target_layer
                if isinstance(target_layer, LayerChoice)
                else resolve_target_layer(model, xb, target_layer)
            )
            # Gradients reach the target layer even when every parameter is frozen.
            xb.requires_grad_(True)
            cam = _run_library(
                getattr(pgc, _LIBRARY_CLASS[name]),
                wrapped,
                choice,
                xb,
                name,
                ClassifierOutputTarget(cls),
                aug_smooth=aug_smooth,
                eigen_smooth=eigen_smooth,
                n_samples=n_samples,
                noise=noise,
                seed=seed,
                batch_size=batch_size,
            )
    finally:
        for m, flag in modes.items():
            m.training = flag
        model.zero_grad(set_to_none=True)
    options: dict[str, Any] = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth}
    if name == "smoothgradcam++":
        options.update(n_samples=n_samples, noise=noise, seed=seed)
    cam = _normalise(cam)
    roi_mask = getattr(model, "roi_mask", None)
    if callable(roi_mask):
        # A region-of-interest model (segmenter -> classifier) is explained inside the region
        # it read: the map is focused on the predicted (dilated) region, e.g. the joint.
        from medlens.explain.draw import focus

        with torch.no_grad():
            region = roi_mask(xb.detach())[0, 0].float().cpu().numpy() >= 0.5
        focused = focus(cam, region, roi="predicted region")
        cam = focused.cam
        options["focus"] = focused.meta
    return CamResult(
        cam=cam,
        method=name,
        target_class=cls,
        layer=choice.name,
        layer_rule=choice.rule,
        probability=prob,
        options=options,
    )


def _run_library(
    cam_cls: Any,
    wrapped: nn.Module,
    choice: LayerChoice,
    xb: torch.Tensor,
    name: str,
    target: Any,
    *,
    aug_smooth: bool,
    eigen_smooth: bool,
    n_samples: int,
    noise: float,
    seed: int,
    batch_size: int,
) -> np.ndarray:
    """One library CAM object, used inside ``with`` (hooks released on exit) for one image."""
    result: np.ndarray | None = None
    with cam_cls(
        model=wrapped, target_layers=[choice.layer], reshape_transform=choice.reshape_transform
    ) as cam:
        cam.batch_size = batch_size  # read by ScoreCAM
        try:
            if name == "smoothgradcam++":
                result = _smooth(cam, xb, target, aug_smooth, eigen_smooth, n_samples, noise, seed)
            else:
                # ScoreCAM draws tqdm progress bars on stderr for every image: keep them quiet.
                quiet = name == "scorecam"
                with (
                    contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext()
                ):
                    result = cam(
                        input_tensor=xb,
                        targets=[target],
                        aug_smooth=aug_smooth,
                        eigen_smooth=eigen_smooth,
                    )[0]
        except IndexError as exc:
            # The library's __exit__ swallows IndexError (and prints it); surface it instead.
            raise ExplainError(f"{name} failed on layer {choice.name!r}: {exc}") from exc
    if result is None:  # pragma: no cover - only if the library swallowed an error
        raise ExplainError(f"{name} returned no heatmap")
    return result


def _smooth(
    cam: Any,
    xb: torch.Tensor,
    target: Any,
    aug_smooth: bool,
    eigen_smooth: bool,
    n_samples: int,
    noise: float,
    seed: int,
) -> np.ndarray:
    """SmoothGrad-CAM++: mean of the library's Grad-CAM++ over ``n_samples`` noisy copies."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    base = xb.detach()
    sigma = float(noise) * float(base.max() - base.min())
    total: np.ndarray | None = None
    bs = max(1, int(getattr(cam, "batch_size", 16)))
    done = 0
    while done < n_samples:
        m = min(bs, n_samples - done)
        eps = torch.randn((m, *base.shape[1:]), generator=gen).to(base.device)
        noisy = (base + sigma * eps).requires_grad_(True)
        maps = cam(
            input_tensor=noisy,
            targets=[target] * m,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
        )
        part = np.asarray(maps, dtype=np.float64).sum(axis=0)
        total = part if total is None else total + part
        done += m
    assert total is not None
    return (total / n_samples).astype(np.float32)


def explain(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    method: str = "gradcam++",
    target_class: int | None = None,
    target_layer: nn.Module | str | None = None,
    head: str | int | None = None,
    **opts: Any,
) -> np.ndarray:
    """``H x W`` float32 heatmap in [0, 1] at input resolution (see :func:`compute_cam`)."""
    return compute_cam(model, x, method, target_class, target_layer, head, **opts).cam
