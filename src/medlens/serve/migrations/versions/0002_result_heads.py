"""Results remember a multi-task model's other heads and a fusion model's modalities used.

Both columns are nullable so that existing rows (results of single-head models stored before this
revision) stay valid unchanged: no head outputs, no modality list.

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("results", sa.Column("heads", sa.JSON(), nullable=True))
    op.add_column("results", sa.Column("modalities_used", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not batch mode: a batch rebuild drops
    # and recreates ``results``, and with foreign keys on, that DROP would null every
    # batch_items.result_id (ON DELETE SET NULL) and detach the worklists from their results.
    op.drop_column("results", "modalities_used")
    op.drop_column("results", "heads")
