"""workflows.on_orphan and runs.requeues: an orphan may be handed over instead of failed

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflows") as batch_op:
        batch_op.add_column(
            sa.Column("on_orphan", sa.String(length=20), nullable=False, server_default="fail")
        )
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(
            sa.Column("requeues", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("requeues")
    with op.batch_alter_table("workflows") as batch_op:
        batch_op.drop_column("on_orphan")
