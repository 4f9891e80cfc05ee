"""Explanations that can be checked: heatmaps with evidence that they point at the lesion
(localisation scores against masks, beside random and centre-prior baselines) and that the model
used that region (ROAD faithfulness against a random heatmap).

Modules: :mod:`.targets` (layer / reshape / head choice), :mod:`.cam` (the pytorch-grad-cam
layer: :func:`explain`), :mod:`.scores` (localisation), :mod:`.faithfulness` (ROAD),
:mod:`.draw` (drawing, ROI focus), :mod:`.images` (files through a bundle),
:mod:`.section` (report HTML), :mod:`.modalities` (a fusion model's heatmap per modality and
each modality's contribution) and :mod:`.modality_report` (its report section).

Names are imported on first use (PEP 562), so ``import medlens.explain`` loads neither torch
nor pytorch-grad-cam.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METHODS": "cam",
    "CamResult": "cam",
    "compute_cam": "cam",
    "explain": "cam",
    "normalise_method": "cam",
    "ExplainError": "targets",
    "LayerChoice": "targets",
    "OutputSelect": "targets",
    "TokenReshape": "targets",
    "resolve_target_layer": "targets",
    "BASELINES": "scores",
    "LocalisationScorer": "scores",
    "box_mask": "scores",
    "centre_prior_cam": "scores",
    "energy_in_mask": "scores",
    "localisation_scores": "scores",
    "pointing_game": "scores",
    "random_cam": "scores",
    "topk_iou": "scores",
    "FaithfulnessScorer": "faithfulness",
    "road_scores": "faithfulness",
    "FocusedCam": "draw",
    "focus": "draw",
    "focus_box": "draw",
    "overlay": "draw",
    "save_png": "draw",
    "ExplanationRecord": "images",
    "align_mask": "images",
    "evaluate_explanations": "images",
    "explain_images": "images",
    "localisation_summary": "images",
    "explanation_section_html": "section",
    "FusionExplanation": "modalities",
    "ModalityExplanation": "modalities",
    "explain_modalities": "modalities",
    "modality_contributions": "modalities",
    "explain_fusion_cases": "modality_report",
    "fusion_section_html": "modality_report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'medlens.explain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medlens.explain.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
