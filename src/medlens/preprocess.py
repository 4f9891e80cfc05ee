"""Image preprocessing: small pure functions on arrays, composed by a validated recipe.

Images arrive as float32 arrays in [0, 1], ``H x W`` (grey) or ``H x W x 3`` (RGB). Each function
returns a new array and never modifies its input, so the same decoded image can be fed to several
pipelines (training cache, explanation overlay, verification) without surprises.

A recipe's ``preprocess`` section is a list of steps (``{step: resize, size: 128}``) validated by
pydantic; :class:`Pipeline` checks that the list can produce what a model needs (a fixed size and
a known channel count, with ``normalize`` statistics of matching length) *before* any image is
read, and returns, per image, the tensor-ready ``C x H x W`` array, a ``display`` image for
overlays and an ``info`` dict saying what happened (crop box, exposure verdict, whether CLAHE ran).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from medlens.errors import MedlensError, RecipeError

__all__ = [
    "ClaheStep",
    "CropBorderStep",
    "ExposureCheckStep",
    "ExposureReport",
    "GrayscaleStep",
    "NormalizeStep",
    "Pipeline",
    "PreprocessError",
    "PreprocessResult",
    "PreprocessStep",
    "ResizeStep",
    "RgbStep",
    "clahe",
    "crop_black_border",
    "exposure_check",
    "normalize",
    "resize",
    "to_channels",
    "to_chw",
]

# Rec. 601 luma weights: what OpenCV and PIL use for RGB -> grey, so results match other tools.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# A pixel this close to 0 or 1 counts as clipped (detector saturation / no signal).
_DARK_CLIP = 0.02
_BRIGHT_CLIP = 0.98
# A border row/column is one where at least this fraction of pixels is below the threshold:
# a fraction (not the mean) so that a burned-in label inside the border does not stop the crop.
_BORDER_DARK_FRACTION = 0.95


class PreprocessError(MedlensError):
    """An array handed to a preprocessing function cannot be processed as given."""


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def _as_image(img: Any, name: str = "image") -> np.ndarray:
    """A float32 ``H x W`` or ``H x W x 3`` copy-free view of ``img`` in [0, 1], or a clear error.

    Integer images are scaled by their dtype's maximum (8/16-bit files decoded without scaling);
    ``H x W x 1`` is treated as grey.
    """
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise PreprocessError(
            f"{name}: expected an H x W (grey) or H x W x 3 (RGB) array, got shape "
            f"{arr.shape}; convert the image to one of these layouts first"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise PreprocessError(f"{name}: empty image of shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if not np.issubdtype(arr.dtype, np.floating):
        raise PreprocessError(f"{name}: unsupported dtype {arr.dtype}; pass float32 in [0, 1]")
    return arr.astype(np.float32, copy=False)


def _grey(img: np.ndarray) -> np.ndarray:
    """Luminance of a validated float image (the image itself when already grey)."""
    return img if img.ndim == 2 else img @ _LUMA


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Return the image with exactly ``channels`` channels (1 -> ``H x W``, 3 -> ``H x W x 3``).

    Models have a fixed input channel count while data sets mix grey and colour files; grey is
    made from RGB by luminance (so a colour photo of a film looks like the film), RGB from grey by
    replicating the channel (what ImageNet-pretrained stems expect).
    """
    arr = _as_image(img)
    if channels == 1:
        return arr.copy() if arr.ndim == 2 else np.ascontiguousarray(_grey(arr), dtype=np.float32)
    if channels == 3:
        if arr.ndim == 3:
            return arr.copy()
        return np.repeat(arr[:, :, None], 3, axis=2)
    raise PreprocessError(f"channels: must be 1 (grey) or 3 (RGB), got {channels!r}")


def _dark_run(is_dark: np.ndarray) -> int:
    """Length of the leading run of True values."""
    not_dark = np.flatnonzero(~is_dark)
    return int(not_dark[0]) if not_dark.size else len(is_dark)


def _limit_crop(lo: int, hi_cut: int, length: int, min_keep: float) -> tuple[int, int]:
    """Shrink the two cuts proportionally so that at least ``min_keep`` of ``length`` survives."""
    max_cut = int(np.floor((1.0 - min_keep) * length))
    total = lo + hi_cut
    if total <= max_cut:
        return lo, hi_cut
    if total == 0:
        return 0, 0
    lo2 = int(np.floor(lo * max_cut / total))
    return lo2, min(hi_cut, max_cut - lo2)


def crop_black_border(
    img: np.ndarray, threshold: float = 0.04, min_keep: float = 0.5
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Remove near-black border rows/columns (scanner frames, letterboxing, collimator padding).

    Such borders carry no anatomy but move the image statistics and the field of view, so a model
    could learn "which scanner" instead of "which disease". A row (column) is border when at least
    95 % of its pixels are below ``threshold``; border is only taken from the edges inwards. The
    crop never removes more than ``1 - min_keep`` of either dimension (both sides together), so a
    mostly-dark film cannot be cropped to a sliver; an all-dark image is returned uncropped.

    Returns the cropped copy and its box ``(y0, y1, x0, x1)`` (end-exclusive) in input pixels.
    """
    arr = _as_image(img)
    if not 0.0 < min_keep <= 1.0:
        raise PreprocessError(f"min_keep: must be in (0, 1], got {min_keep!r}")
    h, w = arr.shape[:2]
    dark = _grey(arr) < threshold
    row_dark = dark.mean(axis=1) >= _BORDER_DARK_FRACTION
    top, bottom = _dark_run(row_dark), _dark_run(row_dark[::-1])
    if top >= h:  # nothing but border: leave the image alone
        return arr.copy(), (0, h, 0, w)
    top, bottom = _limit_crop(top, bottom, h, min_keep)
    y0, y1 = top, h - bottom
    # Columns are judged inside the kept rows so that a top/bottom border does not count as dark.
    col_dark = dark[y0:y1].mean(axis=0) >= _BORDER_DARK_FRACTION
    left, right = _dark_run(col_dark), _dark_run(col_dark[::-1])
    if left >= w:
        left = right = 0
    left, right = _limit_crop(left, right, w, min_keep)
    x0, x1 = left, w - right
    return arr[y0:y1, x0:x1].copy(), (y0, y1, x0, x1)


@dataclass(frozen=True)
class ExposureReport:
    """Global exposure statistics of a (grey) image and the verdict ``ok`` / ``under`` / ``over``."""

    mean: float
    p1: float
    p99: float
    dark_fraction: float
    bright_fraction: float
    status: Literal["ok", "under", "over"]


def exposure_check(
    img: np.ndarray, low: float = 0.2, high: float = 0.8, clip_fraction: float = 0.05
) -> ExposureReport:
    """Flag under- and over-exposed images.

    Badly exposed films lose contrast in the lungs (the signal) and are a known shortcut source;
    flagging them lets a pipeline enhance only those (``clahe: only_if_flagged``) and lets reports
    count them. ``under``: mean below ``low`` or more than ``clip_fraction`` of pixels clipped dark
    (< 0.02); ``over``: mean above ``high`` or more than ``clip_fraction`` clipped bright (> 0.98).
    When both tails are clipped the larger one decides. Run it after ``crop_border``: a black frame
    otherwise counts as clipped-dark pixels.
    """
    arr = _as_image(img)
    g = _grey(arr)
    mean = float(g.mean())
    p1, p99 = (float(v) for v in np.percentile(g, [1, 99]))
    dark = float((g < _DARK_CLIP).mean())
    bright = float((g > _BRIGHT_CLIP).mean())
    status: Literal["ok", "under", "over"] = "ok"
    if mean < low:
        status = "under"
    elif mean > high:
        status = "over"
    elif dark > clip_fraction or bright > clip_fraction:
        status = "under" if dark >= bright else "over"
    return ExposureReport(mean, p1, p99, dark, bright, status)


def _clahe_u16(plane: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """CLAHE on one float plane in [0, 1] via 16-bit OpenCV, with 8-bit clip-limit semantics.

    OpenCV's 16-bit CLAHE uses 65536 histogram bins and a per-bin clip of
    ``max(1, int(clip_limit * tile_pixels / 65536))``: for ordinary tile sizes that floors to 1, so
    the clip limit stops meaning anything (8-bit-sourced data is then barely changed, continuous
    data gets unlimited equalisation and amplified noise). So the plane is first snapped to the
    256-level grid (multiples of 257) and the clip limit scaled by 256, which reproduces the usual
    256-bin CLAHE (``clip_limit`` means what it means everywhere else), while the tile-to-tile
    interpolation still produces 16-bit output.
    """
    h, w = plane.shape
    grid = (max(1, min(tile_grid, w)), max(1, min(tile_grid, h)))
    u16 = (np.rint(np.clip(plane, 0.0, 1.0) * 255.0).astype(np.uint16)) * np.uint16(257)
    engine = cv2.createCLAHE(clipLimit=float(clip_limit) * 256.0, tileGridSize=grid)
    return engine.apply(u16).astype(np.float32) / 65535.0


def clahe(img: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV ``createCLAHE``).

    Restores local contrast in under/over-exposed films without the noise blow-up of plain
    equalisation. Float [0, 1] is converted to uint16 (0..65535), equalised and converted back to
    float [0, 1] (see :func:`_clahe_u16` for how the clip limit keeps its usual meaning). RGB
    images are equalised on the L channel of CIE-LAB only, so hues do not shift; grey images
    directly.
    """
    arr = _as_image(img)
    if clip_limit <= 0:
        raise PreprocessError(f"clip_limit: must be > 0, got {clip_limit!r}")
    if tile_grid < 1:
        raise PreprocessError(f"tile_grid: must be >= 1, got {tile_grid!r}")
    if arr.ndim == 2:
        return _clahe_u16(arr, clip_limit, tile_grid)
    lab = cv2.cvtColor(np.clip(arr, 0.0, 1.0), cv2.COLOR_RGB2LAB)  # float: L in [0, 100]
    lab[:, :, 0] = _clahe_u16(lab[:, :, 0] / 100.0, clip_limit, tile_grid) * 100.0
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), 0.0, 1.0).astype(np.float32)


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        hw = (int(size), int(size))
    else:
        vals = tuple(int(v) for v in size)
        if len(vals) != 2:
            raise PreprocessError(f"size: give one int or [height, width], got {size!r}")
        hw = (vals[0], vals[1])
    if min(hw) < 1:
        raise PreprocessError(f"size: must be positive, got {size!r}")
    return hw


def _resize_exact(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    src_h, src_w = arr.shape[:2]
    if (src_h, src_w) == (h, w):
        return arr.copy()
    # INTER_AREA averages when shrinking (no aliasing of ribs/noise); linear when enlarging.
    interp = cv2.INTER_AREA if (h <= src_h and w <= src_w) else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(arr), (w, h), interpolation=interp)
    return out.astype(np.float32, copy=False)


def resize(img: np.ndarray, size: int | tuple[int, int], keep_aspect: bool = False) -> np.ndarray:
    """Resize to ``size`` (an int for square, or ``(height, width)``).

    Models need one fixed input size. ``keep_aspect=False`` stretches (fine when all inputs share
    an aspect ratio); ``keep_aspect=True`` scales the longer side to fit and pads with zeros,
    centred (letterbox), so anatomy keeps its proportions.
    """
    arr = _as_image(img)
    h, w = _size_hw(size)
    if not keep_aspect:
        return _resize_exact(arr, h, w)
    src_h, src_w = arr.shape[:2]
    scale = min(h / src_h, w / src_w)
    new_h = min(h, max(1, round(src_h * scale)))
    new_w = min(w, max(1, round(src_w * scale)))
    inner = _resize_exact(arr, new_h, new_w)
    out = np.zeros((h, w, *arr.shape[2:]), dtype=np.float32)
    y0, x0 = (h - new_h) // 2, (w - new_w) // 2
    out[y0 : y0 + new_h, x0 : x0 + new_w] = inner
    return out


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Per-channel ``(img - mean) / std``: puts inputs on the scale the model's weights expect."""
    arr = np.asarray(img, dtype=np.float32)
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    m = np.asarray(mean, dtype=np.float32).reshape(-1)
    s = np.asarray(std, dtype=np.float32).reshape(-1)
    if m.size != channels or s.size != channels:
        raise PreprocessError(
            f"normalize: mean/std have {m.size}/{s.size} values but the image has {channels} "
            f"channel(s); give one value per channel"
        )
    if np.any(s <= 0):
        raise PreprocessError(f"normalize: std must be > 0, got {list(s)}")
    if arr.ndim == 2:
        return ((arr - m[0]) / s[0]).astype(np.float32)
    return ((arr - m) / s).astype(np.float32)


def to_chw(img: np.ndarray) -> np.ndarray:
    """``H x W`` -> ``1 x H x W``, ``H x W x C`` -> ``C x H x W``: float32, C-contiguous (tensor-ready)."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        return np.array(arr[None, :, :], dtype=np.float32, order="C", copy=True)
    if arr.ndim == 3:
        return np.array(np.transpose(arr, (2, 0, 1)), dtype=np.float32, order="C", copy=True)
    raise PreprocessError(f"to_chw: expected a 2-D or 3-D array, got shape {arr.shape}")


# --------------------------------------------------------------------------------------------
# Recipe steps
# --------------------------------------------------------------------------------------------


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrayscaleStep(_Step):
    """Make the image single-channel (luminance)."""

    step: Literal["grayscale"] = "grayscale"


class RgbStep(_Step):
    """Make the image three-channel (grey is replicated)."""

    step: Literal["rgb"] = "rgb"


class CropBorderStep(_Step):
    """Remove near-black borders (see :func:`crop_black_border`)."""

    step: Literal["crop_border"] = "crop_border"
    threshold: float = Field(0.04, ge=0.0, le=1.0)
    min_keep: float = Field(0.5, gt=0.0, le=1.0)


class ExposureCheckStep(_Step):
    """Record exposure statistics and a verdict (see :func:`exposure_check`)."""

    step: Literal["exposure_check"] = "exposure_check"
    low: float = Field(0.2, ge=0.0, le=1.0)
    high: float = Field(0.8, ge=0.0, le=1.0)
    clip_fraction: float = Field(0.05, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> ExposureCheckStep:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ClaheStep(_Step):
    """CLAHE (see :func:`clahe`); with ``only_if_flagged`` only on images the last check flagged."""

    step: Literal["clahe"] = "clahe"
    clip_limit: float = Field(2.0, gt=0.0)
    tile_grid: int = Field(8, ge=1)
    only_if_flagged: bool = False


class ResizeStep(_Step):
    """Resize to a fixed ``size`` (int, or ``[height, width]``); ``keep_aspect`` letterboxes."""

    step: Literal["resize"] = "resize"
    size: (
        Annotated[int, Field(ge=1)]
        | tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]
    )
    keep_aspect: bool = False

    @property
    def hw(self) -> tuple[int, int]:
        return _size_hw(self.size)


class NormalizeStep(_Step):
    """Per-channel ``(x - mean) / std``; one value per output channel."""

    step: Literal["normalize"] = "normalize"
    mean: list[float] = Field(min_length=1)
    std: list[Annotated[float, Field(gt=0.0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeStep:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values and std {len(self.std)}; give one per channel"
            )
        return self


PreprocessStep = Annotated[
    GrayscaleStep
    | RgbStep
    | CropBorderStep
    | ExposureCheckStep
    | ClaheStep
    | ResizeStep
    | NormalizeStep,
    Field(discriminator="step"),
]

_STEPS_ADAPTER: TypeAdapter[list[PreprocessStep]] = TypeAdapter(list[PreprocessStep])


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


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
            if isinstance(self.steps[i], CropBorderStep):
                raise RecipeError(
                    f"preprocess step {i + 1} (crop_border) comes after the last resize and would "
                    "change the output size; move crop_border before resize"
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
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

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
            elif isinstance(s, ResizeStep):
                x = resize(x, s.size, s.keep_aspect)
            elif isinstance(s, NormalizeStep):
                out = normalize(x, s.mean, s.std)
        display = np.ascontiguousarray(x, dtype=np.float32)
        image = to_chw(display if out is None else out)
        return PreprocessResult(image=image, info=info, display=display)


def align_mask(mask: str | Path | np.ndarray, pipeline: Any, info: dict[str, Any]) -> np.ndarray:
    """A lesion mask in original-image pixels, carried through the pipeline's geometry.

    ``info`` is the :class:`~medlens.preprocess.PreprocessResult` ``info`` of the image: the mask
    is first brought to the original image's size (nearest neighbour), cropped by its
    ``crop_bbox`` where the pipeline cropped, then resized (and letterboxed) by each ``resize``
    step exactly as the image was; a resized pixel is lesion when at least half of it was.
    """
    from medlens.data.io import read_mask

    shape = tuple(int(v) for v in info["original_shape"][:2])
    if isinstance(mask, str | Path):
        m = read_mask(mask, shape=shape)  # type: ignore[arg-type]
    else:
        m = np.asarray(mask).astype(bool)
        if m.ndim != 2:
            raise MedlensError(f"a mask must be H x W, got shape {m.shape}")
        if m.shape != shape:
            m = cv2.resize(
                m.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST
            ).astype(bool)
    crop = info.get("crop_bbox")
    cropped = False
    for step in pipeline.steps:
        if isinstance(step, CropBorderStep) and crop is not None and not cropped:
            y0, y1, x0, x1 = (int(v) for v in crop)
            m = m[y0:y1, x0:x1]
            cropped = True
        elif isinstance(step, ResizeStep):
            m = resize(m.astype(np.float32), step.size, step.keep_aspect) >= 0.5
    return np.ascontiguousarray(m, dtype=bool)
