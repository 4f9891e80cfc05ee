"""How each kind of model is trained: one table, kind → fitter.

A model's kind is data on its registry entry (:func:`medlens.models.model_info`); a fitter is
``fitter(request: FitRequest) -> StagedFit``. Training a recipe is a lookup in :data:`FITTERS`,
never a test of the model's name, so a new kind of model is a registry entry
(``@register_model(..., kind="mykind")``) plus a fitter (``@register_fitter("mykind")``)::

    @register_fitter("mykind")
    def fit_mykind(req: FitRequest) -> StagedFit:
        data = req.split_data()          # train+val preprocessed once, shared by stages
        ...
        return StagedFit(FitResult(model, ...), req.recipe.model_kwargs())

Composite kinds fit their stages through :meth:`FitRequest.stage`, which comes back here, so an
ensemble member of any kind is trained by that kind's fitter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from medlens.errors import RecipeError
from medlens.models import model_info
from medlens.train.classical import fit_classical_model
from medlens.train.composite import fit_ensemble, fit_roi
from medlens.train.request import FitRequest, FitResult, StagedFit
from medlens.train.trainer import fit_network

__all__ = [
    "FITTERS",
    "FitRequest",
    "FitResult",
    "Fitter",
    "StagedFit",
    "fit_model",
    "fitter_for",
    "register_fitter",
]

Fitter = Callable[[FitRequest], StagedFit]


def _segmenter_alone(req: FitRequest) -> StagedFit:
    name = req.recipe.model.name
    raise RecipeError(
        f"{req.recipe.name}: model.name {name!r} is a segmenter; medlens trains a segmenter as the "
        f"first stage of roi_classifier (name: roi_classifier, kwargs.segmenter: {{name: {name}}})"
    )


FITTERS: dict[str, Fitter] = {
    "network": fit_network,
    "multitask": fit_network,  # a dict of heads: the classifier module weighs their losses
    "fusion": fit_network,  # a dict of modalities: the record dataset feeds them
    "classical": fit_classical_model,
    "ensemble": fit_ensemble,
    "roi": fit_roi,
    "segmentation": _segmenter_alone,
}


def register_fitter(kind: str) -> Callable[[Fitter], Fitter]:
    """Decorator: ``fn`` fits models of ``kind`` (a kind registered twice is an error)."""

    def wrap(fn: Fitter) -> Fitter:
        if kind in FITTERS:
            raise ValueError(f"a fitter for model kind {kind!r} is already registered")
        FITTERS[kind] = fn
        return fn

    return wrap


def fitter_for(model_name: str) -> Fitter:
    """The fitter of a registry model name, by the kind on its entry."""
    kind = model_info(model_name).kind
    if kind not in FITTERS:
        raise RecipeError(
            f"model.name: {model_name!r} is of kind {kind!r}, which has no fitter; register one "
            f"with medlens.train.fitters.register_fitter({kind!r}) (kinds with a fitter: "
            f"{', '.join(sorted(FITTERS))})"
        )
    return FITTERS[kind]


def fit_model(req: FitRequest) -> StagedFit:
    """Fit the request's model with the fitter of its kind."""
    return fitter_for(req.recipe.model.name)(replace(req, dispatch=fit_model))
