"""step_items.input_tokens, output_tokens: a resumed fan-out counts its earlier items' usage

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_items") as batch_op:
        for name in ("input_tokens", "output_tokens"):
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("step_items") as batch_op:
        for name in ("input_tokens", "output_tokens"):
            batch_op.drop_column(name)
