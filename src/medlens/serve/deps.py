"""Request dependencies shared by the web pages and the REST API: the app state and a DB session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from medlens.serve.services import ServeState


def state_of(request: Request) -> ServeState:
    return request.app.state.medlens


def get_db(request: Request) -> Iterator[Session]:
    """One session per request, closed however the request ends."""
    db = state_of(request).db()
    try:
        yield db
    finally:
        db.close()


DB = Annotated[Session, Depends(get_db)]
