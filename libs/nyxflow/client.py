"""Typed async clients for the Runs and Engine services, used by the gateway, engine and CLI.

    async with grpc.aio.insecure_channel("127.0.0.1:50051") as channel:
        runs = RunsClient(channel, bearer_metadata("dev-key"))
        workflow = await runs.create_workflow("demo", [StepSpec(name="a", kind="llm")])
        run = await runs.create_run(workflow.id)
        async for event in runs.watch_run(run.id):
            print(event.seq, event.type)

gRPC failures come back as the matching `nyxflow.errors` exception.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Sequence
from typing import Any, TypeVar

import grpc

from nyxflow.auth import Metadata
from nyxflow.errors import from_rpc_error
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import engine_pb2, engine_pb2_grpc, runs_pb2, runs_pb2_grpc

T = TypeVar("T")


def open_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


async def _unary(call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None


async def _stream(call: Any) -> AsyncGenerator[pb.RunEvent, None]:
    try:
        async for item in call:
            yield item
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    finally:
        call.cancel()  # a consumer that stops listening releases the upstream stream


class RunsClient:
    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata, timeout_s: float = 10.0):
        self._stub = runs_pb2_grpc.RunsStub(channel)
        self._md = metadata
        self._timeout = timeout_s

    def _kw(self) -> dict[str, Any]:
        return {"metadata": self._md, "timeout": self._timeout}

    async def create_workflow(
        self, name: str, steps: Sequence[pb.StepSpec], consistency_check: bool = False
    ) -> pb.Workflow:
        request = runs_pb2.CreateWorkflowRequest(
            name=name, steps=steps, consistency_check=consistency_check
        )
        return await _unary(self._stub.CreateWorkflow(request, **self._kw()))

    async def delete_workflow(self, workflow_id: str) -> None:
        request = runs_pb2.DeleteWorkflowRequest(workflow_id=workflow_id)
        await _unary(self._stub.DeleteWorkflow(request, **self._kw()))

    async def duplicate_workflow(self, workflow_id: str, name: str = "") -> pb.Workflow:
        request = runs_pb2.DuplicateWorkflowRequest(workflow_id=workflow_id, name=name)
        return await _unary(self._stub.DuplicateWorkflow(request, **self._kw()))

    async def list_personas(self) -> list[pb.Persona]:
        request = runs_pb2.ListPersonasRequest()
        return list((await _unary(self._stub.ListPersonas(request, **self._kw()))).personas)

    async def put_persona(self, persona: pb.Persona) -> pb.Persona:
        request = runs_pb2.PutPersonaRequest(persona=persona)
        return await _unary(self._stub.PutPersona(request, **self._kw()))

    async def get_workflow(self, workflow_id: str) -> pb.Workflow:
        request = runs_pb2.GetWorkflowRequest(workflow_id=workflow_id)
        return await _unary(self._stub.GetWorkflow(request, **self._kw()))

    async def list_workflows(self) -> list[pb.Workflow]:
        response = await _unary(
            self._stub.ListWorkflows(runs_pb2.ListWorkflowsRequest(), **self._kw())
        )
        return list(response.workflows)

    async def create_run(self, workflow_id: str) -> pb.Run:
        request = runs_pb2.CreateRunRequest(workflow_id=workflow_id)
        return await _unary(self._stub.CreateRun(request, **self._kw()))

    async def get_run(self, run_id: str) -> pb.Run:
        return await _unary(self._stub.GetRun(runs_pb2.GetRunRequest(run_id=run_id), **self._kw()))

    async def list_runs(
        self, workflow_id: str = "", status: str = "", limit: int = 50
    ) -> list[pb.Run]:
        request = runs_pb2.ListRunsRequest(workflow_id=workflow_id, status=status, limit=limit)
        return list((await _unary(self._stub.ListRuns(request, **self._kw()))).runs)

    async def retry_step(self, step_id: str, cascade: bool = False) -> pb.Run:
        request = runs_pb2.RetryStepRequest(step_id=step_id, cascade=cascade)
        return await _unary(self._stub.RetryStep(request, **self._kw()))

    async def resume_workflow(self, workflow_id: str) -> pb.Run:
        request = runs_pb2.ResumeWorkflowRequest(workflow_id=workflow_id)
        return await _unary(self._stub.ResumeWorkflow(request, **self._kw()))

    async def rerun_workflow(self, workflow_id: str) -> pb.Run:
        request = runs_pb2.RerunWorkflowRequest(workflow_id=workflow_id)
        return await _unary(self._stub.RerunWorkflow(request, **self._kw()))

    async def pause_run(self, run_id: str) -> pb.Run:
        request = runs_pb2.PauseRunRequest(run_id=run_id)
        return await _unary(self._stub.PauseRun(request, **self._kw()))

    async def cancel_run(self, run_id: str) -> pb.Run:
        request = runs_pb2.CancelRunRequest(run_id=run_id)
        return await _unary(self._stub.CancelRun(request, **self._kw()))

    async def select_alternative(self, step_id: str, index: int) -> pb.Step:
        request = runs_pb2.SelectAlternativeRequest(step_id=step_id, index=index)
        return await _unary(self._stub.SelectAlternative(request, **self._kw()))

    async def claim_run(self, run_id: str, owner: str, ttl_s: float) -> runs_pb2.ClaimRunResponse:
        request = runs_pb2.ClaimRunRequest(run_id=run_id, owner=owner, lease_ttl_s=ttl_s)
        return await _unary(self._stub.ClaimRun(request, **self._kw()))

    async def heartbeat(self, run_id: str, token: int, ttl_s: float) -> float:
        request = runs_pb2.HeartbeatRequest(run_id=run_id, token=token, lease_ttl_s=ttl_s)
        response = await _unary(self._stub.Heartbeat(request, **self._kw()))
        return float(response.lease_expires_at)

    async def append_events(
        self, run_id: str, token: int, events: Sequence[pb.EventDraft]
    ) -> runs_pb2.WriteResponse:
        request = runs_pb2.AppendEventsRequest(run_id=run_id, token=token, events=events)
        return await _unary(self._stub.AppendEvents(request, **self._kw()))

    async def update_step(
        self,
        run_id: str,
        token: int,
        step_id: str,
        change: runs_pb2.StepChange,
        events: Sequence[pb.EventDraft] = (),
    ) -> runs_pb2.WriteResponse:
        request = runs_pb2.UpdateStepRequest(
            run_id=run_id, token=token, step_id=step_id, change=change, events=events
        )
        return await _unary(self._stub.UpdateStep(request, **self._kw()))

    async def put_step_item(
        self,
        run_id: str,
        token: int,
        step_id: str,
        item: pb.StepItem,
        events: Sequence[pb.EventDraft] = (),
    ) -> runs_pb2.WriteResponse:
        request = runs_pb2.PutStepItemRequest(
            run_id=run_id, token=token, step_id=step_id, item=item, events=events
        )
        return await _unary(self._stub.PutStepItem(request, **self._kw()))

    async def record(
        self,
        run_id: str,
        token: int,
        ops: Sequence[runs_pb2.WriteOp],
        finish_status: str = "",
        finish_error: str = "",
    ) -> runs_pb2.WriteResponse:
        request = runs_pb2.RecordRequest(
            run_id=run_id,
            token=token,
            ops=ops,
            finish_status=finish_status,
            finish_error=finish_error,
        )
        return await _unary(self._stub.Record(request, **self._kw()))

    async def generate_steps(
        self,
        run_id: str,
        token: int,
        after_step_id: str,
        steps: Sequence[pb.StepSpec],
        events: Sequence[pb.EventDraft] = (),
    ) -> runs_pb2.WriteResponse:
        request = runs_pb2.GenerateStepsRequest(
            run_id=run_id, token=token, after_step_id=after_step_id, steps=steps, events=events
        )
        return await _unary(self._stub.GenerateSteps(request, **self._kw()))

    async def finish_run(
        self,
        run_id: str,
        token: int,
        status: str,
        error: str = "",
        events: Sequence[pb.EventDraft] = (),
    ) -> runs_pb2.WriteResponse:
        request = runs_pb2.FinishRunRequest(
            run_id=run_id, token=token, status=status, error=error, events=events
        )
        return await _unary(self._stub.FinishRun(request, **self._kw()))

    def watch_run(self, run_id: str, after_seq: int = 0) -> AsyncGenerator[pb.RunEvent, None]:
        request = runs_pb2.WatchRunRequest(run_id=run_id, after_seq=after_seq)
        return _stream(self._stub.WatchRun(request, metadata=self._md))


class EngineClient:
    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata):
        self._stub = engine_pb2_grpc.EngineStub(channel)
        self._md = metadata

    def execute(self, run_id: str) -> AsyncGenerator[pb.RunEvent, None]:
        request = engine_pb2.ExecuteRequest(run_id=run_id)
        return _stream(self._stub.Execute(request, metadata=self._md))
