"""The Runs gRPC service: proto in, store call, proto out. No SQL and no rules here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2, runs_pb2_grpc
from nyxflow_runs import validation as valid
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.store import Draft, Store
from nyxflow_runs.tenancy import Tenancy
from nyxflow_runs.watch import watch_run

Ctx: TypeAlias = grpc.aio.ServicerContext


class RunsServicer(runs_pb2_grpc.RunsServicer):
    def __init__(self, store: Store, bus: LocalBus, tenancy: Tenancy, poll_s: float) -> None:
        self._store = store
        self._bus = bus
        self._tenancy = tenancy
        self._poll_s = poll_s

    async def CreateWorkflow(
        self, request: runs_pb2.CreateWorkflowRequest, context: Ctx
    ) -> pb.Workflow:
        tenant = await self._tenancy.tenant_of(context)
        name = valid.workflow_name(request.name)
        return await self._store.create_workflow(tenant, name, valid.step_drafts(request.steps))

    async def GetWorkflow(self, request: runs_pb2.GetWorkflowRequest, context: Ctx) -> pb.Workflow:
        tenant = await self._tenancy.tenant_of(context)
        workflow_id = valid.require_id(request.workflow_id, "workflow_id")
        return await self._store.get_workflow(tenant, workflow_id)

    async def ListWorkflows(
        self, request: runs_pb2.ListWorkflowsRequest, context: Ctx
    ) -> runs_pb2.ListWorkflowsResponse:
        tenant = await self._tenancy.tenant_of(context)
        return runs_pb2.ListWorkflowsResponse(workflows=await self._store.list_workflows(tenant))

    async def CreateRun(self, request: runs_pb2.CreateRunRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenancy.tenant_of(context)
        workflow_id = valid.require_id(request.workflow_id, "workflow_id")
        return await self._store.create_run(tenant, workflow_id)

    async def GetRun(self, request: runs_pb2.GetRunRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenancy.tenant_of(context)
        return await self._store.get_run(tenant, valid.require_id(request.run_id, "run_id"))

    async def ClaimRun(
        self, request: runs_pb2.ClaimRunRequest, context: Ctx
    ) -> runs_pb2.ClaimRunResponse:
        tenant = await self._tenancy.tenant_of(context)
        run_id = valid.require_id(request.run_id, "run_id")
        owner = valid.require_id(request.owner, "owner")
        ttl = valid.positive(request.lease_ttl_s, "lease_ttl_s")
        claim = await self._store.claim_run(tenant, run_id, owner, ttl)
        return runs_pb2.ClaimRunResponse(
            won=claim.won, token=claim.token, run=claim.run, events=claim.events
        )

    async def Heartbeat(
        self, request: runs_pb2.HeartbeatRequest, context: Ctx
    ) -> runs_pb2.HeartbeatResponse:
        tenant = await self._tenancy.tenant_of(context)
        ttl = valid.positive(request.lease_ttl_s, "lease_ttl_s")
        expires = await self._store.heartbeat(tenant, request.run_id, request.token, ttl)
        return runs_pb2.HeartbeatResponse(lease_expires_at=expires)

    async def AppendEvents(
        self, request: runs_pb2.AppendEventsRequest, context: Ctx
    ) -> runs_pb2.WriteResponse:
        tenant = await self._tenancy.tenant_of(context)
        drafts = Draft.from_pb(request.events)
        written = await self._store.append_events(tenant, request.run_id, request.token, drafts)
        return runs_pb2.WriteResponse(events=written)

    async def UpdateStep(
        self, request: runs_pb2.UpdateStepRequest, context: Ctx
    ) -> runs_pb2.WriteResponse:
        tenant = await self._tenancy.tenant_of(context)
        written = await self._store.update_step(
            tenant,
            request.run_id,
            request.token,
            valid.require_id(request.step_id, "step_id"),
            request.change,
            Draft.from_pb(request.events),
        )
        return runs_pb2.WriteResponse(events=written)

    async def FinishRun(
        self, request: runs_pb2.FinishRunRequest, context: Ctx
    ) -> runs_pb2.WriteResponse:
        tenant = await self._tenancy.tenant_of(context)
        written = await self._store.finish_run(
            tenant,
            request.run_id,
            request.token,
            request.status,
            request.error,
            Draft.from_pb(request.events),
        )
        return runs_pb2.WriteResponse(events=written)

    async def WatchRun(
        self, request: runs_pb2.WatchRunRequest, context: Ctx
    ) -> AsyncIterator[pb.RunEvent]:
        tenant = await self._tenancy.tenant_of(context)
        run_id = valid.require_id(request.run_id, "run_id")
        if request.after_seq < 0:
            raise InvalidArgument("must not be negative", field="after_seq")
        async for event in watch_run(
            self._store, self._bus, tenant, run_id, request.after_seq, self._poll_s
        ):
            yield event
