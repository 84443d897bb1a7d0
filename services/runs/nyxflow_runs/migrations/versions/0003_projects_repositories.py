"""repositories, project notes and workflow insights

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from nyxflow_runs.clock import db_now

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NOW = db_now()


def _owned(name: str, parent: str, *columns: sa.Column) -> None:  # type: ignore[type-arg]
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
            f"{parent}_id",
            sa.String(length=36),
            sa.ForeignKey(f"{parent}s.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        *columns,
        sa.Column("created_at", sa.Float(), server_default=NOW, nullable=False),
    )


def upgrade() -> None:
    _owned(
        "repositories",
        "project",
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
    )
    op.create_index(
        "uq_repositories_tenant_owner_repo",
        "repositories",
        ["tenant_id", "owner", "repo"],
        unique=True,
    )
    _owned("project_notes", "project", sa.Column("text", sa.Text(), nullable=False))
    _owned("workflow_insights", "workflow", sa.Column("text", sa.Text(), nullable=False))


def downgrade() -> None:
    op.drop_table("workflow_insights")
    op.drop_table("project_notes")
    op.drop_index("uq_repositories_tenant_owner_repo", table_name="repositories")
    op.drop_table("repositories")
