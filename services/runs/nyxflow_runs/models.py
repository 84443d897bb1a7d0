"""The tables. Timestamps are epoch seconds from the database's clock (see clock.py)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nyxflow.constants import MAX_SERVED_BY
from nyxflow_runs.clock import db_now

ACTIVE_RUN_SQL = "status IN ('pending', 'running')"
# Runs re-queued and waiting for an engine: the adopters' poll (hot_path.REQUEUED), word for
# word, or PostgreSQL does not see that the partial index holds its rows.
REQUEUED_RUN_SQL = "status = 'pending' AND requeues > 0"


def new_id() -> str:
    return str(uuid.uuid4())


class Base(AsyncAttrs, DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}
    # Server defaults (the database's clock) come back with the INSERT, not a lazy load.
    __mapper_args__ = {"eager_defaults": True}


class TenantOwned:
    """Marks a table whose rows belong to one tenant: scoped sessions filter it (scoping.py)."""

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    default_providers: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())
    revoked_at: Mapped[float | None] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)


class Project(TenantOwned, Base):
    __tablename__ = "projects"
    __table_args__ = (Index("uq_projects_tenant_name", "tenant_id", "name", unique=True),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())


class Workflow(TenantOwned, Base):
    __tablename__ = "workflows"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # A project's workflows (its list, its delete's cascade) read every workflow without it.
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    consistency_check: Mapped[bool] = mapped_column(Boolean, default=False)
    on_orphan: Mapped[str] = mapped_column(String(20), default="fail", server_default="fail")
    default_providers: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())
    updated_at: Mapped[float] = mapped_column(Float, server_default=db_now())


class Repository(TenantOwned, Base):
    """A git work tree a project's pipelines read; unique per tenant by (owner, repo)."""

    __tablename__ = "repositories"
    __table_args__ = (
        Index("uq_repositories_tenant_owner_repo", "tenant_id", "owner", "repo", unique=True),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str] = mapped_column(String(200))
    repo: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())


class ProjectNote(TenantOwned, Base):
    __tablename__ = "project_notes"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())


class WorkflowInsight(TenantOwned, Base):
    __tablename__ = "workflow_insights"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    workflow_id: Mapped[str] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), index=True
    )
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())


class Persona(TenantOwned, Base):
    """A tenant's own persona; built-ins live in code (nyxflow.personas) and may be shadowed."""

    __tablename__ = "personas"
    __table_args__ = (Index("uq_personas_tenant_name", "tenant_id", "name", unique=True),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(200), default="")
    system_prompt: Mapped[str] = mapped_column(Text)


class Step(TenantOwned, Base):
    __tablename__ = "steps"
    __table_args__ = (Index("ix_steps_workflow_order", "workflow_id", "position"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))
    prompt: Mapped[str] = mapped_column(Text, default="")
    provider: Mapped[str] = mapped_column(String(200), default="local")
    model: Mapped[str] = mapped_column(String(200), default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    max_tokens: Mapped[int] = mapped_column(Integer)
    persona: Mapped[str] = mapped_column(String(100), default="")
    alternatives: Mapped[int] = mapped_column(Integer, default=1)
    auto_continue: Mapped[int] = mapped_column(Integer, default=0)
    # Kind-specific definition: source, split, concurrency, generates, reviews, tool.
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    auto_generated: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    finish_reason: Mapped[str | None] = mapped_column(String(40))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    served_by: Mapped[str | None] = mapped_column(String(MAX_SERVED_BY))  # provider:model, …
    selected_index: Mapped[int] = mapped_column(Integer, default=0)
    alternatives_out: Mapped[list[Any]] = mapped_column(JSON, default=list)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class StepItem(TenantOwned, Base):
    """One fan-out item's result: a row each, written the moment the item finishes."""

    __tablename__ = "step_items"
    __table_args__ = (Index("uq_step_items_step_index", "step_id", "item_index", unique=True),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    step_id: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    item_index: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[str] = mapped_column(Text, default="")
    truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    output_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # sha256 of the item's input (pb.StepItem.input_hash); NULL: stored before it was kept.
    input_hash: Mapped[str | None] = mapped_column(String(64))
    served_by: Mapped[str | None] = mapped_column(String(MAX_SERVED_BY))  # as Step.served_by
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())


class Run(TenantOwned, Base):
    __tablename__ = "runs"
    __table_args__ = (
        # At most one active run per workflow, enforced by the database itself.
        Index(
            "uq_runs_active_workflow",
            "workflow_id",
            unique=True,
            postgresql_where=text(ACTIVE_RUN_SQL),
            sqlite_where=text(ACTIVE_RUN_SQL),
        ),
        Index("ix_runs_status_lease", "status", "lease_expires_at"),
        # A workflow's runs, newest first: its latest run (the list's status, resume), its
        # runs' list, and a workflow's delete (the cascade) read every run without it. With
        # the id, the listing's order whole: the latest is the first entry read.
        Index("ix_runs_workflow_created", "workflow_id", "created_at", "id"),
        # A tenant's runs, newest first, as ListRuns pages through them by (created_at, id).
        Index("ix_runs_tenant_created", "tenant_id", "created_at", "id"),
        # The adopters' poll, several a second: the few re-queued runs among every pending one.
        Index(
            "ix_runs_requeued",
            "created_at",
            postgresql_where=text(REQUEUED_RUN_SQL),
            sqlite_where=text(REQUEUED_RUN_SQL),
        ),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    token: Mapped[int] = mapped_column(Integer, default=0)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    requeues: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_batch: Mapped[str | None] = mapped_column(String(64))  # the engine's last Record
    # That Record's number within the claim (RecordRequest.batch_seq); 0 again at each claim.
    last_batch_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class RunEvent(TenantOwned, Base):
    __tablename__ = "run_events"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())


class RunArtifact(TenantOwned, Base):
    """A file a run's step produced (a pipeline's patch, its review); kept when the workflow
    re-runs. One per step and name: two review steps of a workflow each keep their patch."""

    __tablename__ = "run_artifacts"
    __table_args__ = (
        Index("uq_run_artifacts_run_step_name", "run_id", "step_id", "name", unique=True),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step_id: Mapped[str] = mapped_column(String(36), default="")
    name: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(100), default="text/plain")
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, server_default=db_now())


class Finding(TenantOwned, Base):
    __tablename__ = "findings"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_id: Mapped[str] = mapped_column(String(36), default="")
    file: Mapped[str] = mapped_column(Text)
    line: Mapped[int] = mapped_column(Integer, default=0)
    severity: Mapped[str] = mapped_column(String(20))
    category: Mapped[str] = mapped_column(String(100), default="")
    message: Mapped[str] = mapped_column(Text)
