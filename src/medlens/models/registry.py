"""One registry builds every network named in a recipe.

Adding an architecture is one decorated function (``@register_model``), never an ``if`` ladder.
Names not registered here fall through to timm, so every timm model name works too. Weights come
from a hub (``pretrained=True``, needs the internet) or a local file (``pretrained="/path.pth"``),
and are adapted to the requested ``num_classes`` / ``in_chans`` the way timm adapts them.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medlens.errors import MedlensError

ModelBuilder = Callable[..., Any]
# A kind names how a model trains (``medlens.train.fitters`` maps each kind to its fitter) and
# what evaluation, explanation and serving may ask of it. The built-in kinds are below; a new kind
# is any other lowercase name, given a fitter with ``medlens.train.fitters.register_fitter``.
ModelKind = str
KINDS: tuple[str, ...] = (
    "network",
    "classical",
    "ensemble",
    "roi",
    "fusion",
    "multitask",
    "segmentation",
)


@dataclass(frozen=True)
class ModelInfo:
    """What callers need to know about a model without guessing from its name.

    ``kind`` says how it trains (the fitter table in ``medlens.train.fitters`` is keyed by it) and
    how it is evaluated and served; ``inputs`` is ``"image"`` (one tensor) or ``"modalities"`` (a
    dict of optional tensors, fusion); ``cam`` is how a heatmap layer is found: ``"auto"`` (family
    rules, then a probe), ``"member"`` (the dominant member of an ensemble), ``"modalities"``
    (one heatmap per modality, each from its own encoder, for the fused output: a fusion model,
    see :mod:`medlens.explain.modalities`) or ``"none"`` (no layer
    a CAM can read); ``exportable`` says whether the network can be traced to a graph (ONNX).
    """

    name: str
    kind: ModelKind = "network"
    inputs: Literal["image", "modalities"] = "image"
    cam: Literal["auto", "member", "modalities", "none"] = "auto"
    exportable: bool = True
    builder: ModelBuilder | None = None

    @property
    def explainable(self) -> bool:
        return self.cam != "none"


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str | None = None,
    *,
    kind: ModelKind = "network",
    inputs: Literal["image", "modalities"] = "image",
    cam: Literal["auto", "member", "modalities", "none"] = "auto",
    exportable: bool = True,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``fn(num_classes, in_chans, pretrained, **kw) -> nn.Module``.

    The keyword arguments are the entry's :class:`ModelInfo`: every place that must know what kind
    of model it holds asks :func:`model_info` instead of testing names or attributes.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", kind):
        raise ValueError(
            f"model kind {kind!r} must be a lowercase name (built-in: {', '.join(KINDS)})"
        )

    def wrap(fn: ModelBuilder) -> ModelBuilder:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = ModelInfo(key, kind, inputs, cam, exportable, fn)
        return fn

    return wrap


def model_info(name_or_model: Any, strict: bool = True) -> ModelInfo:
    """The registry entry of a model name, or of a model built by :func:`create_model`.

    timm names and ``backbone+reader`` hybrids are plain networks. A model object built elsewhere
    (no ``medlens_info`` tag) is taken as a plain network. ``strict=False`` takes any name not
    registered here as a plain network without asking timm (cheap; for validating recipes).
    """
    if not isinstance(name_or_model, str):
        info = getattr(name_or_model, "medlens_info", None)
        return info if isinstance(info, ModelInfo) else ModelInfo(type(name_or_model).__name__)
    _ensure_builtin()
    name = name_or_model
    if name in _REGISTRY:
        return _REGISTRY[name]
    if not strict or "+" in name or is_model(name):
        return ModelInfo(name)
    raise MedlensError(f"model.name: unknown model {name!r} (`medlens models` lists every name)")


def unregister_model(name: str) -> None:
    """Remove a registration (a plug-in unloading, or a test's temporary model)."""
    _REGISTRY.pop(name, None)


def tag_model(model: Any, name: str) -> Any:
    """Give a model assembled outside :func:`create_model` (e.g. an ensemble of trained
    members) its registry entry, so :func:`model_info` answers for the object too."""
    _ensure_builtin()
    return _tag(model, _REGISTRY[name])


def _tag(model: Any, info: ModelInfo) -> Any:
    """Attach the entry to the built model so code holding only the object can ask its kind."""
    # An object that refuses attributes stays untagged: model_info then falls back to a network.
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(model, "medlens_info", info)
    return model


def _ensure_builtin() -> None:
    # Importing the modules runs their @register_model decorators (the one allowed import
    # circle: each of them imports this module to register).
    from medlens.models import (  # noqa: F401
        classical,
        ensemble,
        heads,
        hybrids,
        monai_nets,
        roi,
        small_cnn,
    )


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def list_models(pattern: str | None = None, include_timm: bool = True) -> list[str]:
    """Registered medlens models, then timm's (filtered by a wildcard ``pattern``)."""
    import fnmatch

    _ensure_builtin()
    names = sorted(_REGISTRY)
    if include_timm:
        names += [n for n in _timm_names() if n not in _REGISTRY]
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def is_model(name: str) -> bool:
    _ensure_builtin()
    if name in _REGISTRY:
        return True
    import timm

    return timm.is_model(name)


def _resolve_pretrained(pretrained: bool | str | Path) -> tuple[bool, Path | None]:
    if isinstance(pretrained, bool):
        return pretrained, None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise MedlensError(
            f"model.pretrained: weights file not found: {path} (give an existing .safetensors/"
            ".pth file, true to download from the hub, or false)"
        )
    return True, path


def create_timm_model(
    name: str, num_classes: int, in_chans: int, pretrained: bool | str | Path = False, **kwargs: Any
) -> Any:
    """A timm model; a local weights file goes through timm's own loader and adaptation."""
    import timm

    use_pretrained, file = _resolve_pretrained(pretrained)
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
    try:
        return timm.create_model(
            name, pretrained=use_pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    except TypeError as exc:
        raise MedlensError(f"model.kwargs for {name!r} are not accepted: {exc}") from None
    except (OSError, RuntimeError) as exc:
        if use_pretrained and file is None:
            raise MedlensError(
                f"could not fetch pretrained weights for {name!r} ({exc}). Without internet, set "
                "model.pretrained to false or to a local weights file."
            ) from None
        raise


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    **kwargs: Any,
) -> Any:
    """Build a network by name.

    >>> m = create_model("small_cnn", num_classes=3, in_chans=1)
    >>> m = create_model("resnet18", num_classes=2, in_chans=3)            # any timm name
    >>> m = create_model("resnet18", 2, 3, pretrained="weights.safetensors")  # local weights

    ``None`` keyword values are dropped so recipes can leave options unset.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    _ensure_builtin()
    if name in _REGISTRY:
        info = _REGISTRY[name]
        assert info.builder is not None
        model = info.builder(
            num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
        )
        return _tag(model, info)
    import timm

    if timm.is_model(name):
        return _tag(
            create_timm_model(name, num_classes, in_chans, pretrained, **kwargs), ModelInfo(name)
        )
    backbone, plus, _ = name.partition("+")
    if plus and (backbone in _REGISTRY or timm.is_model(backbone)):  # backbone + a reader
        from medlens.models.hybrids import build_hybrid

        return _tag(
            build_hybrid(name, num_classes, in_chans, pretrained, **kwargs), ModelInfo(name)
        )
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise MedlensError(
        f"model.name: unknown model {name!r}.{hint} (`medlens models` lists every name)"
    )
