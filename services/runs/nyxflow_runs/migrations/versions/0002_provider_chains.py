"""provider chains: a default per workflow and per tenant

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("workflows", "tenants"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(
                sa.Column("default_providers", sa.JSON(), nullable=False, server_default="[]")
            )


def downgrade() -> None:
    for table in ("workflows", "tenants"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("default_providers")
