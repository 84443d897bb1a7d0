"""run_artifacts unique per (run, step, name): a workflow's second review step overwrote the
first one's patch and review

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows unique per (run, name) are unique per (run, step, name) too: nothing to move.
    op.drop_index("uq_run_artifacts_run_name", table_name="run_artifacts")
    op.create_index(
        "uq_run_artifacts_run_step_name",
        "run_artifacts",
        ["run_id", "step_id", "name"],
        unique=True,
    )


def downgrade() -> None:
    # Only the latest step's artifact of each name can stay under the old index.
    op.execute(
        "DELETE FROM run_artifacts WHERE EXISTS (SELECT 1 FROM run_artifacts AS later"
        " WHERE later.run_id = run_artifacts.run_id AND later.name = run_artifacts.name"
        " AND (later.created_at > run_artifacts.created_at"
        " OR (later.created_at = run_artifacts.created_at AND later.id > run_artifacts.id)))"
    )
    op.drop_index("uq_run_artifacts_run_step_name", table_name="run_artifacts")
    op.create_index("uq_run_artifacts_run_name", "run_artifacts", ["run_id", "name"], unique=True)
