"""runs by workflow, newest first: a workflow's latest run and its list read every run without it

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_workflow_created", "runs", ["workflow_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_workflow_created", table_name="runs")
