"""Images may carry an accession or study number the user entered, for the report.

Nullable and empty by default: nothing is stored unless the user types it in, and images stored
before this revision stay valid unchanged.

Revision ID: 0003
Revises: 0002
Create Date: 2026-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("accession", sa.String(64), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite >= 3.35), not a batch rebuild: see 0002 for why.
    op.drop_column("images", "accession")
