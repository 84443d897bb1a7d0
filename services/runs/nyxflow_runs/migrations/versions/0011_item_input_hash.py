"""step_items.input_hash: a fan-out whose source ran again keeps the items whose input is
unchanged (NULL for items stored before: their input is unknown)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_items") as batch_op:
        batch_op.add_column(sa.Column("input_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("step_items") as batch_op:
        batch_op.drop_column("input_hash")
