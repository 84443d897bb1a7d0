"""Handing a run to another engine: an orphan the sweeper puts back to pending (the
workflow's `on_orphan: resume`), a draining engine letting go of its runs, and the list of
such runs that engines adopt from.

A requeued run keeps its id, its events and its finished steps: followers see `run_requeued`
and then the next engine's `run_started` on the same stream, and the next claim's token
fences out whatever the old engine still tries to write.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs.models import Run, Workflow
from nyxflow_runs.store.base import Draft
from nyxflow_runs.store.record import Batch, Recording, Written

DEFAULT_ADOPT_LIMIT = 10


def resumable() -> Any:
    """Runs another engine may take over: their workflow says `on_orphan: resume`, they have
    not gone round too often, and nobody asked them to pause (that wish is kept: a drain
    pauses them, a sweep fails them, resumable by hand either way)."""
    return and_(
        Run.workflow_id.in_(select(Workflow.id).where(Workflow.on_orphan == ev.ON_ORPHAN_RESUME)),
        Run.requeues < ev.MAX_REQUEUES,
        Run.pause_requested.is_(False),
    )


class Handover(Recording):
    async def _requeue(
        self, session: AsyncSession, where: Any, reason: str
    ) -> list[tuple[str, list[pb.RunEvent]]]:
        """Running → pending for every run `where` selects, with a `run_requeued` event; their
        running steps go back to pending, so the next claim runs them again."""
        rows = (
            await session.execute(
                update(Run)
                .where(where)
                .values(
                    status=ev.PENDING,
                    error=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    requeues=Run.requeues + 1,
                    last_seq=Run.last_seq + 1,
                )
                .returning(Run.id, Run.tenant_id, Run.workflow_id, Run.last_seq, Run.requeues)
                .execution_options(synchronize_session=False)
            )
        ).all()
        requeued = []
        for row in rows:
            data = {"status": ev.PENDING, "reason": reason, "requeues": row.requeues}
            written = await self._insert_events(
                session, row.tenant_id, row.id, row.last_seq, [Draft(ev.RUN_REQUEUED, data)]
            )
            requeued.append((row.id, written))
        await self._settle_running_steps(session, [r.workflow_id for r in rows], ev.PENDING, "")
        return requeued

    async def release_run(
        self, tenant_id: str, run_id: str, token: int, reason: str
    ) -> tuple[str, Written]:
        """A draining engine lets go: back to pending for another replica if the run is
        `resumable`, else paused, to be resumed by hand. Fenced like every engine write."""
        fenced = self._fenced(tenant_id, run_id, token)
        async with self._sessions.begin() as session:
            requeued = await self._requeue(session, and_(*fenced, resumable()), reason)
        if requeued:
            ((_, events),) = requeued
            await self._bus.publish(run_id, events)
            return ev.PENDING, Written(events, False)
        # Not ours to hand over: paused, or refused as stale by the same fence as any write.
        paused = Batch.of([], ev.PAUSED, reason)
        return ev.PAUSED, await self.record(tenant_id, run_id, token, paused)

    async def list_requeued_all_tenants(self, limit: int = 0) -> list[tuple[str, str]]:
        """(run id, tenant id) of the runs waiting for an engine after a requeue, oldest
        first. Not scoped: only the engine's internal credentials reach it."""
        if self._hot is not None:
            return await self._hot.requeued(limit or DEFAULT_ADOPT_LIMIT)
        async with self._sessions() as session:
            rows = await session.execute(
                select(Run.id, Run.tenant_id)
                .where(Run.status == ev.PENDING, Run.requeues > 0)
                .order_by(Run.created_at)
                .limit(limit or DEFAULT_ADOPT_LIMIT)
            )
            return [(row.id, row.tenant_id) for row in rows]
