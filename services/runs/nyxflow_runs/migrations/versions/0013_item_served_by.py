"""step_items.served_by: which provider made each fan-out item, so a fan-out resumed after
its last item was stored says who served it (NULL for items stored before it was kept)

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_items") as batch_op:
        batch_op.add_column(sa.Column("served_by", sa.String(400), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("step_items") as batch_op:
        batch_op.drop_column("served_by")
