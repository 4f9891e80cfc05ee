"""The one error shape of the REST API, and the statuses each kind of operation can answer.

Every error the API returns - a refused upload, a missing token, a validation failure, a body
over the limit, a rate limit, an unknown route - has the body::

    {"error": {"code": "not_found", "message": "Not found.", "field": null}}

``code`` is stable and machine-readable (one per HTTP status, table below), ``message`` is for
people (it names the file or field and what would fix it), ``field`` names the request field at
fault when there is one (``query.offset``, ``body.file``). FastAPI's default (``detail`` as a
string for HTTP errors, a list for validation errors) gave clients two shapes to parse; this is
one, and the OpenAPI schema documents it for every status an operation can return.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}

DESCRIPTIONS: dict[int, str] = {
    400: "The request was understood but refused (unknown model, corrupt file...)",
    401: "Missing, invalid or revoked API token",
    404: "No such object for this user (it may exist and belong to someone else)",
    409: "The object is in a state that does not allow this",
    413: "Request, file or image too large",
    415: "The file is not an image format this server accepts",
    422: "A parameter or field is missing or invalid",
    429: "Too many requests; retry after the time in Retry-After",
    503: "The service cannot produce this now (model or heatmap unavailable)",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable: " + ", ".join(sorted(set(CODES.values()))))
    message: str = Field(description="what went wrong and what would fix it, for people")
    field: str | None = Field(
        default=None, description="the request field at fault, e.g. query.offset"
    )


class ErrorOut(BaseModel):
    """The body of every error response of the API."""

    error: ErrorDetail


def error_body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    code = CODES.get(status, "bad_request" if status < 500 else "internal_error")
    return {"error": {"code": code, "message": message, "field": field}}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses an operation can return."""
    return {s: {"model": ErrorOut, "description": DESCRIPTIONS[s]} for s in statuses}
