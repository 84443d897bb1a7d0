"""The orphan sweep, across tenants: the one query that is not scoped by a caller."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import and_, select, update

from nyxflow import events as ev
from nyxflow import metrics
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs.clock import db_now
from nyxflow_runs.models import Run
from nyxflow_runs.store.base import Draft
from nyxflow_runs.store.handover import Handover, resumable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swept:
    failed: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)  # back to pending (on_orphan: resume)


class Sweeping(Handover):
    async def sweep_orphans_all_tenants(self, workflow_id: str | None = None) -> Swept:
        """Every running run whose lease expired by the database's clock goes back to pending
        if it is `resumable` (handover.py), else fails.

        Conditional UPDATEs: two replicas sweeping at once sweep each orphan once.
        """
        if self._hot is not None and not await self._hot.any_expired(workflow_id):
            return Swept()  # the usual answer, found with one index lookup
        published: list[tuple[str, list[pb.RunEvent]]] = []
        async with self._sessions.begin() as session:
            # One reading of the clock for both statements: a lease that lapsed between them
            # would otherwise be failed though its run could be requeued.
            now = await session.scalar(select(db_now()))
            expired = [Run.status == ev.RUNNING, Run.lease_expires_at < now]
            if workflow_id is not None:
                expired.append(Run.workflow_id == workflow_id)
            requeued = await self._requeue(session, and_(*expired, resumable()), ev.ORPHAN_ERROR)
            published += requeued
            swept = (
                await session.execute(
                    update(Run)
                    .where(and_(*expired))
                    .values(
                        status=ev.FAILED,
                        error=ev.ORPHAN_ERROR,
                        finished_at=db_now(),
                        lease_owner=None,
                        lease_expires_at=None,
                        last_seq=Run.last_seq + 1,
                    )
                    .returning(Run.id, Run.tenant_id, Run.workflow_id, Run.last_seq)
                    .execution_options(synchronize_session=False)
                )
            ).all()
            for row in swept:
                draft = Draft(ev.RUN_FAILED, {"status": ev.FAILED, "error": ev.ORPHAN_ERROR})
                written = await self._insert_events(
                    session, row.tenant_id, row.id, row.last_seq, [draft]
                )
                published.append((row.id, written))
            await self._settle_running_steps(
                session, [row.workflow_id for row in swept], ev.FAILED, ev.ORPHAN_ERROR
            )
        for run_id, written in published:
            await self._bus.publish(run_id, written)
        done = Swept([row.id for row in swept], [run_id for run_id, _ in requeued])
        _count(done)
        return done

    async def extend_leases_all_tenants(self, grace_s: float) -> int:
        """Every running run's lease lasts at least `grace_s` more by the database's clock;
        how many were extended. For runs' start: a lease that lapsed while no runs served
        says nothing of its engine, which could renew none meanwhile."""
        if grace_s <= 0:
            return 0
        async with self._sessions.begin() as session:
            until = db_now() + grace_s
            extended = await session.execute(
                update(Run)
                .where(
                    Run.status == ev.RUNNING,
                    (Run.lease_expires_at.is_(None)) | (Run.lease_expires_at < until),
                )
                .values(lease_expires_at=until)
                .execution_options(synchronize_session=False)
            )
        return int(extended.rowcount or 0)  # type: ignore[attr-defined]


def _count(swept: Swept) -> None:
    """Here, not in the sweeper's loop: a Start, a delete, a choice or a move sweeps the
    workflow's orphans first, and those went uncounted and unlogged."""
    metrics.SWEPT.inc(len(swept.failed) + len(swept.requeued))
    metrics.RUNS_FINISHED.labels(status=ev.FAILED).inc(len(swept.failed))
    metrics.RUNS_REQUEUED.labels(cause="orphaned").inc(len(swept.requeued))
    for run_id in swept.failed:
        log.warning("swept orphaned run", extra={"action": "sweep", "run_id": run_id})
    for run_id in swept.requeued:
        log.warning(
            "swept orphaned run, requeued for another engine",
            extra={"action": "requeue", "run_id": run_id},
        )
