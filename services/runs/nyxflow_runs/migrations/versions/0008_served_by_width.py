"""steps.served_by holds provider:model, and each may be 200 characters long

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.alter_column(
            "served_by", type_=sa.String(length=400), existing_type=sa.String(length=200)
        )


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.alter_column(
            "served_by", type_=sa.String(length=200), existing_type=sa.String(length=400)
        )
