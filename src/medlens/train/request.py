"""What every fitter takes and returns, and the train+val data they share.

A fitter (one per model kind, see :mod:`medlens.train.fitters`) is ``fitter(request) ->
StagedFit``: the :class:`FitRequest` carries the recipe, the data and where to write, so adding a
kind never means copying a six-argument signature again. The preprocessed train+val images are
prepared once per request (:meth:`FitRequest.split_data`) and shared by every stage of a
composite model (ensemble members, the ROI classifier behind its segmenter).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.manifest import Manifest, Sample
from medlens.data.splits import Splits
from medlens.errors import DataError
from medlens.recipes import Recipe
from medlens.train.cache import ImageCache, build_cache
from medlens.train.losses import balanced_class_weights

log = logging.getLogger(__name__)
DONE = "training_done.json"  # written in a run folder when its fit finished


@dataclass
class FitResult:
    model: Any  # torch.nn.Module in eval mode, best validation weights
    best_checkpoint: Path
    best_score: float | None
    epochs_run: int
    resumed: bool
    excluded: dict[str, str]  # unreadable files: path -> reason


@dataclass
class StagedFit:
    """A trained model plus the bundle ``model.kwargs`` that rebuild it and what was learned."""

    result: FitResult
    model_kwargs: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplitData:
    """Train+val images preprocessed once, with everything a recipe's model learns from."""

    samples: list[Sample]  # train then val, in cache order
    cache: ImageCache
    rows: dict[str, list[int]]  # readable cache rows of each split
    labels: list[int]  # class index per cache row
    excluded: dict[str, str]  # unreadable files: path -> reason
    targets: dict[str, np.ndarray]  # head -> value per cache row (-1 / NaN unknown)
    modal: dict[str, tuple[np.ndarray, np.ndarray]]  # extra modality -> (array, readable)
    main_modality: str | None = None


@dataclass
class FitRequest:
    """One model to fit: the recipe, its data and split, the run folder, and how to fit stages.

    ``dispatch`` is the fitter table's lookup (set by :func:`medlens.train.fitters.fit_model`): a
    composite fitter fits each stage through :meth:`stage`, so an ensemble member of any kind is
    trained by that kind's fitter without this module knowing the table.
    """

    recipe: Recipe
    manifest: Manifest
    splits: Splits
    run_dir: Path
    progress: bool = True
    fresh: bool = False
    data: SplitData | None = None
    dispatch: Callable[[FitRequest], StagedFit] | None = field(default=None, repr=False)

    def split_data(self) -> SplitData:
        """The preprocessed train+val data, prepared on first use (cache under ``run_dir``)."""
        if self.data is None:
            self.data = prepare_split_data(
                self.recipe, self.manifest, self.splits, self.run_dir, self.progress
            )
        return self.data

    def stage(self, recipe: Recipe, run_dir: Path) -> StagedFit:
        """Fit ``recipe``'s model into ``run_dir`` on this request's data, by its kind's fitter."""
        if self.dispatch is None:
            raise RuntimeError("FitRequest.stage needs a dispatch (use medlens.train.fitters)")
        return self.dispatch(replace(self, recipe=recipe, run_dir=run_dir, data=self.split_data()))


def head_targets(recipe: Recipe, samples: list[Sample]) -> dict[str, np.ndarray]:
    """Each extra head's targets read from its manifest column; bad values name file + column."""
    out: dict[str, np.ndarray] = {}
    for name, head in recipe.task.heads.items():
        reg = head.type == "regression"
        values = np.full(len(samples), np.nan if reg else -1, dtype=np.float32 if reg else np.int64)
        for i, s in enumerate(samples):
            raw = s.get(head.column)
            if raw is None:
                continue
            try:
                v = float(raw)
            except ValueError:
                raise DataError(
                    f"{s.path}: column {head.column!r} (head {name!r}) holds {raw!r}, not a number"
                ) from None
            if not reg and (v != int(v) or not 0 <= v < (head.num_classes or 0)):
                raise DataError(
                    f"{s.path}: column {head.column!r} (head {name!r}) holds {raw!r}; expected an "
                    f"integer 0..{(head.num_classes or 0) - 1}"
                )
            values[i] = v
        out[name] = values
    return out


def prepare_split_data(
    recipe: Recipe, manifest: Manifest, splits: Splits, run_dir: Path, progress: bool
) -> SplitData:
    """Cache train+val images (and other modalities), read extra targets, index the splits."""
    samples: list[Sample] = splits.samples(manifest, "train") + splits.samples(manifest, "val")
    pipeline = recipe.pipeline()
    cache = build_cache(samples, pipeline, run_dir / "cache", progress)
    cls_index = {c: i for i, c in enumerate(recipe.task.classes)}
    labels = [cls_index[s.label] for s in samples]  # type: ignore[index]
    n_train = len(splits.samples(manifest, "train"))
    excluded = {samples[i].path: msg for i, msg in cache.errors.items()}
    for path, reason in excluded.items():
        log.warning("excluded unreadable image %s: %s", path, reason)
    rows = {
        "train": [i for i in range(n_train) if cache.ok[i]],
        "val": [i for i in range(n_train, len(samples)) if cache.ok[i]],
    }
    for k, v in rows.items():
        if not v:
            raise DataError(f"no readable images in the {k} split ({len(excluded)} unreadable)")
    modal: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    main = None
    if recipe.data.modalities:
        main, *others = recipe.data.modalities
        for m in others:
            col = recipe.data.modalities[m]
            alt = [Sample(s.get(col) or "", s.label) for s in samples]
            c = build_cache(alt, pipeline, run_dir / "cache", progress)
            modal[m] = (c.array, c.ok)
            log.info("%s: %d of %d images readable", m, int(c.ok.sum()), len(alt))
    return SplitData(
        samples, cache, rows, labels, excluded, head_targets(recipe, samples), modal, main
    )


def class_weights(recipe: Recipe, train_labels: list[int]) -> list[float] | None:
    """The loss's class weights: balanced on the training labels, none, or the recipe's list."""
    k = len(recipe.task.classes)
    cw = recipe.train.class_weights
    if cw == "balanced":
        return balanced_class_weights(train_labels, k)
    if cw == "none":
        return None
    if len(cw) != k:
        raise DataError(f"train.class_weights needs {k} numbers, one per class")
    return list(cw)
