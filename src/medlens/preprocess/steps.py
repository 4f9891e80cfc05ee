"""The recipe's ``preprocess`` steps: one validated pydantic model per step.

A recipe lists steps as dicts (``{step: resize, size: 128}``); each becomes one of these frozen
models, so an unknown step or parameter is refused with the recipe's own words before any image
is read.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from medlens.preprocess.ops import _size_hw

__all__ = [
    "ClaheStep",
    "CommonFormStep",
    "CropBorderStep",
    "ExposureCheckStep",
    "GrayscaleStep",
    "NormalizeStep",
    "PreprocessStep",
    "ResizeStep",
    "RgbStep",
    "StandardizeStep",
]


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


class CommonFormStep(_Step):
    """One aspect ratio for every image (centred crop or pad): size/aspect stop telling sources
    apart (see :func:`medlens.preprocess.form.common_form`). Put it before ``resize``."""

    step: Literal["common_form"] = "common_form"
    aspect: float = Field(1.0, gt=0.0, description="width / height")
    mode: Literal["crop", "pad"] = "crop"


class StandardizeStep(_Step):
    """Per-image intensity standardisation: its own percentiles to [0, 1], so a source's
    brightness or gain carries nothing (see :func:`medlens.preprocess.form.standardize`)."""

    step: Literal["standardize"] = "standardize"
    low: float = Field(1.0, ge=0.0, lt=50.0, description="percentile mapped to 0")
    high: float = Field(99.0, gt=50.0, le=100.0, description="percentile mapped to 1")
    ignore_black: bool = False


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
    | CommonFormStep
    | StandardizeStep
    | NormalizeStep,
    Field(discriminator="step"),
]

_STEPS_ADAPTER: TypeAdapter[list[PreprocessStep]] = TypeAdapter(list[PreprocessStep])
