"""The Pipeline: an ordered, validated list of steps run on one image array.

:class:`Pipeline` checks that the list can produce what a model needs (a fixed size and a known
channel count, with ``normalize`` statistics of matching length) *before* any image is read, and
returns, per image, the tensor-ready ``C x H x W`` array, a ``display`` image for overlays and an
``info`` dict saying what happened (crop box, exposure verdict, whether CLAHE ran).
:func:`align_mask` carries a lesion mask through the same geometry.

Everything here takes arrays: reading files is :mod:`medlens.data.io`'s job, upstream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

from medlens.common import bytes_sha256, resize_nearest
from medlens.errors import MedlensError, RecipeError
from medlens.preprocess.exposure import clahe, exposure_check
from medlens.preprocess.form import common_form, standardize
from medlens.preprocess.ops import (
    PreprocessError,
    _as_image,
    crop_black_border,
    normalize,
    resize,
    to_channels,
    to_chw,
)
from medlens.preprocess.steps import (
    _STEPS_ADAPTER,
    ClaheStep,
    CommonFormStep,
    CropBorderStep,
    ExposureCheckStep,
    GrayscaleStep,
    NormalizeStep,
    PreprocessStep,
    ResizeStep,
    RgbStep,
    StandardizeStep,
    _Step,
)

__all__ = ["Pipeline", "PreprocessResult", "align_mask"]


@dataclass
class PreprocessResult:
    """One preprocessed image.

    ``image``: float32 ``C x H x W`` (normalised), ready for a tensor. ``display``: the ``H x W``
    or ``H x W x 3`` float image in [0, 1] after the geometric and intensity steps but before
    ``normalize``, pixel-aligned with ``image`` (for heat-map overlays). ``info``: what happened,
    JSON-friendly (``original_shape``, ``crop_bbox``, ``exposure``, ``exposure_status``,
    ``clahe_applied``).
    """

    image: np.ndarray
    info: dict[str, Any]
    display: np.ndarray = field(repr=False)


def _step_example(kind: str) -> str:
    return {
        "resize": "{step: resize, size: 224}",
        "channels": "{step: grayscale} (or {step: rgb})",
        "exposure": "{step: exposure_check}",
    }[kind]


class Pipeline:
    """An ordered, validated list of preprocessing steps; call it on an image.

    Construction checks that the steps can feed a model: a ``resize`` fixes the output size (and
    no ``crop_border`` follows it), a ``grayscale``/``rgb`` step fixes the channel count,
    ``normalize`` (if any) is last and has one mean/std per channel, and a
    ``clahe: only_if_flagged`` step has an ``exposure_check`` before it. A violation raises
    :class:`~medlens.errors.RecipeError` naming the step and the fix.
    """

    def __init__(self, steps: Sequence[PreprocessStep | dict[str, Any]]) -> None:
        if isinstance(steps, dict | str | bytes):
            raise RecipeError("preprocess must be a list of steps, e.g. [{step: grayscale}, ...]")
        raw = list(steps)
        if any(isinstance(s, dict) for s in raw):
            raw = _STEPS_ADAPTER.validate_python(
                [s.model_dump() if isinstance(s, BaseModel) else s for s in raw]
            )
        self.steps: tuple[PreprocessStep, ...] = tuple(raw)
        self._channels, self._size = self._validate()

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Sequence[dict[str, Any]]) -> Pipeline:
        """Build from plain dicts (a recipe's ``preprocess`` list).

        Unknown steps or parameters raise :class:`pydantic.ValidationError` (the recipe loader
        names the file); structurally unusable pipelines raise :class:`RecipeError`.
        """
        return cls(_STEPS_ADAPTER.validate_python(list(config)))

    def _validate(self) -> tuple[int, tuple[int, int]]:
        n = len(self.steps)
        for i, s in enumerate(self.steps):
            if not isinstance(s, _Step):
                raise RecipeError(
                    f"preprocess step {i + 1} is a {type(s).__name__}, not a step; "
                    f"build the pipeline with Pipeline.from_config(list_of_dicts)"
                )
        resize_idx = [i for i, s in enumerate(self.steps) if isinstance(s, ResizeStep)]
        if not resize_idx:
            raise RecipeError(
                "the preprocess pipeline has no 'resize' step, so images would not share one "
                f"size; add {_step_example('resize')} (after any crop_border)"
            )
        last_resize = resize_idx[-1]
        for i in range(last_resize + 1, n):
            if isinstance(self.steps[i], CropBorderStep | CommonFormStep):
                raise RecipeError(
                    f"preprocess step {i + 1} ({self.steps[i].step}) comes after the last resize "
                    f"and would change the output size; move {self.steps[i].step} before resize"
                )
        channel_idx = [
            i for i, s in enumerate(self.steps) if isinstance(s, GrayscaleStep | RgbStep)
        ]
        if not channel_idx:
            raise RecipeError(
                "the preprocess pipeline has neither a 'grayscale' nor an 'rgb' step, so the "
                "number of channels the model gets would depend on each file; add "
                f"{_step_example('channels')} as the first step"
            )
        channels = 1 if isinstance(self.steps[channel_idx[-1]], GrayscaleStep) else 3
        flagged_source = False
        for i, s in enumerate(self.steps):
            if isinstance(s, ExposureCheckStep):
                flagged_source = True
            if isinstance(s, ClaheStep) and s.only_if_flagged and not flagged_source:
                raise RecipeError(
                    f"preprocess step {i + 1} (clahe, only_if_flagged: true) has no "
                    f"exposure_check before it; add {_step_example('exposure')} before it or "
                    "set only_if_flagged: false"
                )
            if isinstance(s, NormalizeStep):
                if i != n - 1:
                    raise RecipeError(
                        f"preprocess step {i + 1} (normalize) must be the last step (later steps "
                        "expect images in [0, 1]); move it to the end"
                    )
                before = [j for j in channel_idx if j < i]
                if not before:
                    raise RecipeError(
                        f"preprocess step {i + 1} (normalize) comes before any grayscale/rgb "
                        f"step, so its channel count is unknown; put {_step_example('channels')} "
                        "first"
                    )
                c = 1 if isinstance(self.steps[before[-1]], GrayscaleStep) else 3
                if len(s.mean) != c or len(s.std) != c:
                    example = (
                        "[0.5], std: [0.25]"
                        if c == 1
                        else "[0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]"
                    )
                    raise RecipeError(
                        f"preprocess step {i + 1} (normalize) has {len(s.mean)} mean / "
                        f"{len(s.std)} std values but the image has {c} channel(s) at that "
                        f"point; give {c} of each, e.g. mean: {example}"
                    )
        final_resize = self.steps[last_resize]
        assert isinstance(final_resize, ResizeStep)
        return channels, final_resize.hw

    # ---- description ---------------------------------------------------------------------

    @property
    def output_channels(self) -> int:
        """Channels of :attr:`PreprocessResult.image` (1 or 3)."""
        return self._channels

    @property
    def output_size(self) -> tuple[int, int]:
        """``(height, width)`` of :attr:`PreprocessResult.image`."""
        return self._size

    def to_config(self) -> list[dict[str, Any]]:
        """Plain, JSON-serialisable dicts (every parameter spelled out); round-trips exactly."""
        return [s.model_dump(mode="json") for s in self.steps]

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON config: names a cache of images preprocessed this way."""
        canonical = json.dumps(self.to_config(), sort_keys=True, separators=(",", ":"))
        return bytes_sha256(canonical.encode("utf-8"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        names = ", ".join(s.step for s in self.steps)
        return f"Pipeline([{names}] -> {self._channels} x {self._size[0]} x {self._size[1]})"

    # ---- running -------------------------------------------------------------------------

    def __call__(self, img: np.ndarray) -> PreprocessResult:
        """Run every step on ``img`` (float [0, 1], ``H x W`` or ``H x W x 3``); input untouched."""
        arr = _as_image(img)
        if not np.all(np.isfinite(arr)):
            raise PreprocessError("image contains NaN or infinite values; fix or drop the file")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise PreprocessError(
                f"image values span [{lo:.3g}, {hi:.3g}] but preprocessing expects [0, 1]; "
                "scale the image (e.g. divide 8-bit data by 255) before preprocessing"
            )
        info: dict[str, Any] = {
            "original_shape": list(arr.shape),
            "crop_bbox": None,
            "exposure": None,
            "exposure_status": None,
            "clahe_applied": False,
        }
        x = np.clip(arr, 0.0, 1.0)
        flagged = False
        out: np.ndarray | None = None
        for s in self.steps:
            if isinstance(s, GrayscaleStep):
                x = to_channels(x, 1)
            elif isinstance(s, RgbStep):
                x = to_channels(x, 3)
            elif isinstance(s, CropBorderStep):
                x, (y0, y1, x0, x1) = crop_black_border(x, s.threshold, s.min_keep)
                if info["crop_bbox"] is None:
                    info["crop_bbox"] = [y0, y1, x0, x1]
                else:  # a second crop: express its box in original pixels
                    py0, _, px0, _ = info["crop_bbox"]
                    info["crop_bbox"] = [py0 + y0, py0 + y1, px0 + x0, px0 + x1]
            elif isinstance(s, ExposureCheckStep):
                report = exposure_check(x, s.low, s.high, s.clip_fraction)
                info["exposure"] = asdict(report)
                info["exposure_status"] = report.status
                flagged = report.status != "ok"
            elif isinstance(s, ClaheStep):
                if flagged or not s.only_if_flagged:
                    x = clahe(x, s.clip_limit, s.tile_grid)
                    info["clahe_applied"] = True
            elif isinstance(s, CommonFormStep):
                x, box = common_form(x, s.aspect, s.mode)
                info.setdefault("form_boxes", []).append([s.mode, *box])
            elif isinstance(s, StandardizeStep):
                x = standardize(x, s.low, s.high, s.ignore_black)
            elif isinstance(s, ResizeStep):
                x = resize(x, s.size, s.keep_aspect)
            elif isinstance(s, NormalizeStep):
                out = normalize(x, s.mean, s.std)
        display = np.ascontiguousarray(x, dtype=np.float32)
        image = to_chw(display if out is None else out)
        return PreprocessResult(image=image, info=info, display=display)


def align_mask(mask: np.ndarray, pipeline: Any, info: dict[str, Any]) -> np.ndarray:
    """A lesion mask in original-image pixels, carried through the pipeline's geometry.

    ``mask`` is an ``H x W`` array (any nonzero value is lesion); a file is read first with
    :func:`medlens.data.io.read_mask`. ``info`` is the :class:`PreprocessResult` ``info`` of the
    image: the mask is first brought to the original image's size (nearest neighbour, pixel
    centres), cropped by its ``crop_bbox`` where the pipeline cropped, then resized (and
    letterboxed) by each ``resize`` step exactly as the image was; a resized pixel is lesion when
    at least half of it was.
    """
    if not isinstance(mask, np.ndarray):
        raise MedlensError(
            f"align_mask takes a mask array, got {type(mask).__name__}; read a mask file with "
            "medlens.data.io.read_mask first"
        )
    m = mask.astype(bool)
    if m.ndim != 2:
        raise MedlensError(f"a mask must be H x W, got shape {m.shape}")
    shape = (int(info["original_shape"][0]), int(info["original_shape"][1]))
    m = resize_nearest(m, shape)
    crop = info.get("crop_bbox")
    cropped = False
    for step in pipeline.steps:
        if isinstance(step, CropBorderStep) and crop is not None and not cropped:
            y0, y1, x0, x1 = (int(v) for v in crop)
            m = m[y0:y1, x0:x1]
            cropped = True
        elif isinstance(step, CommonFormStep):
            m = common_form(m.astype(np.float32), step.aspect, step.mode)[0] >= 0.5
        elif isinstance(step, ResizeStep):
            m = resize(m.astype(np.float32), step.size, step.keep_aspect) >= 0.5
    return np.ascontiguousarray(m, dtype=bool)
