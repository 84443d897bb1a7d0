"""What users do to workflows and runs: retry, resume, re-run, pause, cancel, choose an
alternative. Each is one transaction and refuses in the wrong state, naming the state."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nyxflow import events as ev
from nyxflow import metrics
from nyxflow.errors import FailedPrecondition, InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs import convert
from nyxflow_runs.clock import db_now
from nyxflow_runs.models import Run
from nyxflow_runs.store.base import Draft, StoreBase

RESUMABLE = frozenset({ev.PAUSED, ev.FAILED, ev.CANCELLED})


class Operations(StoreBase):
    async def retry_step(self, tenant_id: str, step_id: str, cascade: bool) -> pb.Run:
        """Reset the step (and with `cascade` every later one, dropping generated steps after
        it) to never-executed, then queue a new run: the step really executes again."""

        async def change(session: AsyncSession, workflow_id: str) -> Draft:
            step = await self._step(session, tenant_id, step_id)
            if cascade:
                await self._delete_generated_after(session, workflow_id, step.position)
                steps = await self._steps(session, workflow_id)
                await self._reset_steps(session, [s for s in steps if s.position >= step.position])
            else:
                await self._reset_steps(session, [step])
            return Draft(ev.STEP_RETRIED, {"step_id": step_id, "cascade": cascade})

        async with self._scoped(tenant_id, write=True) as session:
            workflow_id = (await self._step(session, tenant_id, step_id)).workflow_id
        return await self._new_run(tenant_id, workflow_id, change)

    async def resume_workflow(self, tenant_id: str, workflow_id: str) -> pb.Run:
        """A new run of a paused or failed workflow: every step not completed runs, in order."""

        async def change(session: AsyncSession, _: str) -> Draft:
            latest = await self._latest_run(session, workflow_id)
            if latest is None or latest.status not in RESUMABLE:
                state = latest.status if latest is not None else "never run"
                raise FailedPrecondition(f"workflow {workflow_id} is {state}; nothing to resume")
            return Draft(ev.WORKFLOW_RESUMED, {"previous_run_id": latest.id})

        return await self._new_run(tenant_id, workflow_id, change)

    async def rerun_workflow(self, tenant_id: str, workflow_id: str) -> pb.Run:
        """Every step back to never-executed, generated steps dropped, and a new run."""

        async def change(session: AsyncSession, _: str) -> Draft:
            await self._delete_generated_after(session, workflow_id, -1)
            await self._reset_steps(session, await self._steps(session, workflow_id))
            return Draft(ev.WORKFLOW_RERUN, {})

        return await self._new_run(tenant_id, workflow_id, change)

    async def pause_run(self, tenant_id: str, run_id: str) -> pb.Run:
        """A pending run pauses at once; a running one at its next step or item boundary."""
        async with self._scoped(tenant_id, write=True) as session:
            run = await self._locked_run(session, tenant_id, run_id)
            written = []
            if run.status == ev.PENDING:
                written = await self._end(session, run, ev.PAUSED, "")
            elif run.status == ev.RUNNING:
                run.pause_requested = True
            else:
                raise FailedPrecondition(f"run {run_id} is {run.status}; only an active run pauses")
            result = await self._run_pb(session, run)
        await self._bus.publish(run_id, written)
        return result

    async def cancel_run(self, tenant_id: str, run_id: str) -> pb.Run:
        """Stops at once: the run ends now and its token moves on, so the engine's next write
        is refused and it stops; the step it was on is marked cancelled."""
        async with self._scoped(tenant_id, write=True) as session:
            run = await self._locked_run(session, tenant_id, run_id)
            if run.status not in ev.ACTIVE_RUN_STATUSES:
                raise FailedPrecondition(
                    f"run {run_id} is {run.status}; only an active run cancels"
                )
            written = await self._end(session, run, ev.CANCELLED, "cancelled by user")
            result = await self._run_pb(session, run)
        await self._bus.publish(run_id, written)
        return result

    async def select_alternative(self, tenant_id: str, step_id: str, index: int) -> pb.Step:
        async with self._scoped(tenant_id, write=True) as session:
            step = await self._step(session, tenant_id, step_id)
            await self._require_idle(session, step.workflow_id)
            alternatives: list[dict[str, Any]] = list(step.alternatives_out or [])
            if step.status != ev.COMPLETED or not alternatives:
                raise FailedPrecondition(f"step {step_id} is {step.status}; it has no alternatives")
            if not 0 <= index < len(alternatives):
                raise InvalidArgument(
                    f"must be between 0 and {len(alternatives) - 1}", field="index"
                )
            chosen = alternatives[index]
            step.selected_index = index
            step.output = chosen.get("output", "")
            step.truncated = bool(chosen.get("truncated", False))
            step.finish_reason = chosen.get("finish_reason")
            step.served_by = chosen.get("served_by")
            await session.flush()
            return (await self._steps_pb(session, tenant_id, [step]))[0]

    # --- helpers ----------------------------------------------------------------------

    async def _new_run(self, tenant_id: str, workflow_id: str, change: Any) -> pb.Run:
        """Under the workflow's lock of 'no active run': apply `change`, then queue a run whose
        first event records what was done."""
        await self.sweep_orphans_all_tenants(workflow_id=workflow_id)
        try:
            async with self._scoped(tenant_id, write=True) as session:
                await self._workflow(session, tenant_id, workflow_id)
                await self._require_idle(session, workflow_id)
                draft = await change(session, workflow_id)
                run = Run(tenant_id=tenant_id, workflow_id=workflow_id, status=ev.PENDING)
                metrics.RUNS_CREATED.inc()
                session.add(run)
                await session.flush()
                await self._append(session, run, [draft])
                return convert.run(run)
        except IntegrityError:
            raise FailedPrecondition(f"workflow {workflow_id} already has an active run") from None

    async def _locked_run(self, session: AsyncSession, tenant_id: str, run_id: str) -> Run:
        run = await session.scalar(
            select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id).with_for_update()
        )
        if run is None:
            await self._run(session, tenant_id, run_id)  # raises NotFound
        assert run is not None
        return run

    async def _end(
        self, session: AsyncSession, run: Run, status: str, error: str
    ) -> list[pb.RunEvent]:
        data: dict[str, Any] = {"status": status}
        if error:
            data["error"] = error
        written = await self._append(
            session, run, [Draft(ev.TERMINAL_EVENT_FOR_STATUS[status], data)]
        )
        run.status = status
        run.error = error or None
        run.token += 1  # fence out whoever held the run
        run.lease_owner = None
        run.lease_expires_at = None
        run.pause_requested = False
        run.finished_at = await session.scalar(select(db_now()))
        await session.flush()
        await self._settle_running_steps(session, [run.workflow_id], status, error)
        return written
