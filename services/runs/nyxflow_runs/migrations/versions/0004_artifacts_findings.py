"""run artifacts and findings of code pipelines

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from nyxflow_runs.clock import db_now

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _owned_by_run(name: str, *columns: sa.Column, index: bool) -> None:  # type: ignore[type-arg]
    op.create_table(
        name,
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.String(length=36),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "run_id",
            sa.String(length=36),
            sa.ForeignKey("runs.id", ondelete="CASCADE"),
            nullable=False,
            index=index,
        ),
        sa.Column("step_id", sa.String(length=36), nullable=False),
        *columns,
    )


def upgrade() -> None:
    _owned_by_run(
        "run_artifacts",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), server_default=db_now(), nullable=False),
        index=False,
    )
    op.create_index("uq_run_artifacts_run_name", "run_artifacts", ["run_id", "name"], unique=True)
    _owned_by_run(
        "findings",
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("severity", sa.String(length=20), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        index=True,
    )


def downgrade() -> None:
    op.drop_table("findings")
    op.drop_index("uq_run_artifacts_run_name", table_name="run_artifacts")
    op.drop_table("run_artifacts")
