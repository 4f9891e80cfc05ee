"""Results carry the input gate's verdict and the conformal prediction set.

One nullable JSON column, ``results.trust``: ``{status, reason, gate, prediction_set, uncertain,
input_check}``. Results stored before this revision keep null and read as assessed ("ok") by a
model whose input check was not recorded.

Revision ID: 0005
Revises: 0004
Create Date: 2026-03-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("results", sa.Column("trust", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite >= 3.35), not a batch rebuild: see 0002 for why.
    op.drop_column("results", "trust")
