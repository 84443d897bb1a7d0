"""The one place tenancy is enforced on queries: a session opened for a tenant sees, updates
and deletes that tenant's rows only, and cannot add rows for another.

Every model with a `tenant_id` is scoped (`with_loader_criteria` on each ORM SELECT, UPDATE
and DELETE the session runs), so a lookup that forgets its `where` still cannot leak.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from nyxflow_runs.models import TenantOwned

TENANT = "tenant_id"


class CrossTenantWrite(RuntimeError):
    """A scoped session was asked to store a row for another tenant: a bug, never user input."""


def _criteria(tenant_id: str) -> Any:
    return with_loader_criteria(
        TenantOwned,
        lambda cls: cls.tenant_id == tenant_id,
        include_aliases=True,
    )


@event.listens_for(Session, "do_orm_execute")
def _scope_statement(state: ORMExecuteState) -> None:
    tenant_id = state.session.info.get(TENANT)
    if tenant_id is None or not (state.is_select or state.is_update or state.is_delete):
        return
    state.statement = state.statement.options(_criteria(tenant_id))


@event.listens_for(Session, "before_flush")
def _stamp_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    tenant_id = session.info.get(TENANT)
    if tenant_id is None:
        return
    for row in session.new:
        if isinstance(row, TenantOwned):
            owner = getattr(row, TENANT, None)
            if owner is None:
                setattr(row, TENANT, tenant_id)
            elif owner != tenant_id:
                raise CrossTenantWrite(f"{type(row).__name__} for tenant {owner}")
