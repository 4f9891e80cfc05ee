"""Image preprocessing: small pure functions on arrays, composed by a validated recipe.

Images arrive as float32 arrays in [0, 1], ``H x W`` (grey) or ``H x W x 3`` (RGB); every function
here takes arrays and returns new ones, never paths (reading files is :mod:`medlens.data.io`'s
job, one layer up) and never modifies its input.

* :mod:`~medlens.preprocess.ops` - channels, border crop, resize, normalise, ``C x H x W``.
* :mod:`~medlens.preprocess.exposure` - the exposure check and CLAHE.
* :mod:`~medlens.preprocess.steps` - the recipe's step models (pydantic).
* :mod:`~medlens.preprocess.pipeline` - :class:`Pipeline` (validated steps run on one image) and
  :func:`align_mask` (a lesion mask carried through the same geometry).
"""

from __future__ import annotations

from medlens.preprocess.exposure import ExposureReport, clahe, exposure_check
from medlens.preprocess.form import common_form, standardize
from medlens.preprocess.ops import (
    PreprocessError,
    crop_black_border,
    normalize,
    resize,
    to_channels,
    to_chw,
)
from medlens.preprocess.pipeline import Pipeline, PreprocessResult, align_mask
from medlens.preprocess.steps import (
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
)

__all__ = [
    "ClaheStep",
    "CommonFormStep",
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
    "StandardizeStep",
    "align_mask",
    "clahe",
    "common_form",
    "crop_black_border",
    "exposure_check",
    "normalize",
    "resize",
    "standardize",
    "to_channels",
    "to_chw",
]
