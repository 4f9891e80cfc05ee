"""The batch queue and login throttling move into the database, so several processes share them.

``batch_items`` gains its own status, the key of its staged (de-identified) file, the worker that
claimed it and until when (a lease: a claim whose worker died is taken again after it), and an
attempt count. Items stored before this revision are finished or were lost with the in-memory
queue: they become ``done`` (with a result) or ``failed`` (with their error, or one saying the
file was lost). ``throttle`` holds rate-limit counters under HMAC'd keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-04-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
LOST = "the server stopped before this file was processed; upload it again"


def upgrade() -> None:
    op.add_column(
        "batch_items",
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
    )
    op.add_column("batch_items", sa.Column("staged_key", sa.String(80), nullable=True))
    op.add_column("batch_items", sa.Column("claimed_by", sa.String(64), nullable=True))
    op.add_column("batch_items", sa.Column("lease_until", TZ, nullable=True))
    op.add_column(
        "batch_items", sa.Column("attempts", sa.Integer(), nullable=False, server_default="0")
    )
    op.create_index("ix_batch_items_status", "batch_items", ["status"])
    items = sa.table(
        "batch_items",
        sa.column("status", sa.String),
        sa.column("result_id", sa.String),
        sa.column("error", sa.Text),
    )
    op.execute(items.update().where(items.c.result_id.is_not(None)).values(status="done"))
    op.execute(
        items.update()
        .where(items.c.result_id.is_(None), items.c.error.is_not(None))
        .values(status="failed")
    )
    op.execute(
        items.update()
        .where(items.c.result_id.is_(None), items.c.error.is_(None))
        .values(status="failed", error=LOST)
    )
    jobs = sa.table(
        "batch_jobs", sa.column("status", sa.String), sa.column("error", sa.Text)
    )  # jobs of the old in-memory queue cannot resume: their files are gone
    op.execute(
        jobs.update()
        .where(jobs.c.status.in_(("queued", "running")))
        .values(status="interrupted", error="the server restarted before it finished")
    )
    op.create_table(
        "throttle",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("window_start", TZ, nullable=False),
        sa.Column("blocked_until", TZ, nullable=True),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_throttle_updated_at", "throttle", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_throttle_updated_at", table_name="throttle")
    op.drop_table("throttle")
    op.drop_index("ix_batch_items_status", table_name="batch_items")
    # Plain DROP COLUMN (SQLite >= 3.35), not a batch rebuild: see 0002 for why.
    for col in ("attempts", "lease_until", "claimed_by", "staged_key", "status"):
        op.drop_column("batch_items", col)
