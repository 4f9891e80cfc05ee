"""One registry builds every network named in a recipe.

Adding an architecture is one decorated function (``@register_model``), never an ``if`` ladder.
Names not registered here fall through to timm, so every timm model name works too. Weights come
from a hub (``pretrained=True``, needs the internet) or a local file (``pretrained="/path.pth"``),
and are adapted to the requested ``num_classes`` / ``in_chans`` the way timm adapts them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

ModelBuilder = Callable[..., Any]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str | None = None) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``fn(num_classes, in_chans, pretrained, **kw) -> nn.Module``."""

    def wrap(fn: ModelBuilder) -> ModelBuilder:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = fn
        return fn

    return wrap


def _ensure_builtin() -> None:
    # Importing the modules runs their @register_model decorators.
    from medlens.models import classical, ensemble, roi, small_cnn, zoo  # noqa: F401


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
        return _REGISTRY[name](
            num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
        )
    import timm

    if timm.is_model(name):
        return create_timm_model(name, num_classes, in_chans, pretrained, **kwargs)
    backbone, plus, _ = name.partition("+")
    if plus and (backbone in _REGISTRY or timm.is_model(backbone)):  # backbone + a reader
        from medlens.models.zoo import build_hybrid

        return build_hybrid(name, num_classes, in_chans, pretrained, **kwargs)
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise MedlensError(
        f"model.name: unknown model {name!r}.{hint} (`medlens models` lists every name)"
    )
