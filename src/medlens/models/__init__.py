"""Networks: one registry builds every model named in a recipe (see :mod:`.registry`)."""

from medlens.models.registry import (
    KINDS,
    ModelInfo,
    create_model,
    is_model,
    list_models,
    model_info,
    register_model,
    tag_model,
    unregister_model,
)

__all__ = [
    "KINDS",
    "ModelInfo",
    "create_model",
    "is_model",
    "list_models",
    "model_info",
    "register_model",
    "tag_model",
    "unregister_model",
]
