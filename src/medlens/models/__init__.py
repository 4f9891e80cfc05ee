"""Networks: one registry builds every model named in a recipe (see :mod:`.registry`)."""

from medlens.models.registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
