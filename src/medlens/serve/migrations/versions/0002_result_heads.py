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
    # batch mode: SQLite cannot drop columns in place, and the downgrade must work there too
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("heads", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("modalities_used", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("modalities_used")
        batch.drop_column("heads")
