"""indexes for the lists and polls that read every row: a tenant's newest runs (ListRuns), a
project's workflows (ListProjects, a project's delete), the re-queued runs (the adopters' poll);
a workflow's runs by (created_at, id), its latest the first read (the workflows list)

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# As models.REQUEUED_RUN_SQL was when this was written: a migration keeps its own copy.
REQUEUED_RUN_SQL = "status = 'pending' AND requeues > 0"


def upgrade() -> None:
    op.drop_index("ix_runs_workflow_created", table_name="runs")
    op.create_index("ix_runs_workflow_created", "runs", ["workflow_id", "created_at", "id"])
    op.create_index("ix_runs_tenant_created", "runs", ["tenant_id", "created_at", "id"])
    op.create_index(
        "ix_runs_requeued",
        "runs",
        ["created_at"],
        postgresql_where=sa.text(REQUEUED_RUN_SQL),
        sqlite_where=sa.text(REQUEUED_RUN_SQL),
    )
    op.create_index("ix_workflows_project_id", "workflows", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_workflows_project_id", table_name="workflows")
    op.drop_index("ix_runs_requeued", table_name="runs")
    op.drop_index("ix_runs_tenant_created", table_name="runs")
    op.drop_index("ix_runs_workflow_created", table_name="runs")
    op.create_index("ix_runs_workflow_created", "runs", ["workflow_id", "created_at"])
