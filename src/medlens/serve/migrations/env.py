"""Alembic environment: runs on the connection :func:`medlens.serve.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from medlens.serve.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic path is supported
    raise RuntimeError("run migrations through medlens.serve.db.migrate(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
