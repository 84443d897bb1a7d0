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

import weakref
from collections.abc import AsyncGenerator, Awaitable, Iterable, Sequence
from typing import Any, TypeVar

import grpc

from nyxflow.auth import Metadata
from nyxflow.errors import from_rpc_error
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    engine_pb2,
    engine_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
)
from nyxflow.v1 import common_pb2 as pb

T = TypeVar("T")


def left_out_from(step: pb.Step) -> int | None:
    """The index from which a whole read (GetRun, GetWorkflow, the claim) left a step's items
    out, their outputs (StepItem.output_left_out) or the items themselves, unlisted
    (Step.items_left_out); None if it left none out. ListStepItems serves them from there."""
    starts = [i.index for i in step.items if i.output_left_out][:1]
    if step.items_left_out:
        starts.append(step.items[-1].index + 1 if step.items else 0)
    return min(starts, default=None)


def listed_with(step: pb.Step, start: int, stored: Iterable[pb.StepItem]) -> list[pb.StepItem]:
    """The step's items: those the read listed before `start`, then `stored` (from `start` on,
    outputs included), which replace the rest."""
    return [*(i for i in step.items if i.index < start), *stored]


def open_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


# A stub builds a callable per RPC (about 40 for Runs): one per channel, not one per client,
# since the engine makes clients per run (each run writes with its own tenant's credentials).
_RUNS_STUBS: weakref.WeakKeyDictionary[grpc.aio.Channel, runs_pb2_grpc.RunsStub] = (
    weakref.WeakKeyDictionary()
)


def _runs_stub(channel: grpc.aio.Channel) -> runs_pb2_grpc.RunsStub:
    stub = _RUNS_STUBS.get(channel)
    if stub is None:
        stub = _RUNS_STUBS[channel] = runs_pb2_grpc.RunsStub(channel)
    return stub


async def _unary(call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None


async def _batches(call: Any) -> AsyncGenerator[Sequence[pb.RunEvent], None]:
    """The events of a stream of `RunEventBatch`, a batch at a time (never an empty one)."""
    try:
        async for batch in call:
            if batch.events:
                yield batch.events
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    finally:
        call.cancel()  # a consumer that stops listening releases the upstream stream


async def _stream(call: Any) -> AsyncGenerator[pb.RunEvent, None]:
    """The events of a stream of `RunEventBatch`, one by one."""
    batches = _batches(call)
    try:
        async for events in batches:
            for event in events:
                yield event
    finally:
        await batches.aclose()


class RunsClient:
    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata, timeout_s: float = 10.0):
        self._stub = _runs_stub(channel)
        self._md = metadata
        self._timeout = timeout_s

    def _kw(self) -> dict[str, Any]:
        return {"metadata": self._md, "timeout": self._timeout}

    async def create_workflow(
        self,
        name: str,
        steps: Sequence[pb.StepSpec],
        consistency_check: bool = False,
        *,
        default_providers: Sequence[str] = (),
        project_id: str = "",
        on_orphan: str = "",
    ) -> pb.Workflow:
        request = runs_pb2.CreateWorkflowRequest(
            name=name,
            steps=steps,
            consistency_check=consistency_check,
            default_providers=default_providers,
            project_id=project_id,
            on_orphan=on_orphan,
        )
        return await self.create_workflow_from(request)

    async def create_workflow_from(self, request: runs_pb2.CreateWorkflowRequest) -> pb.Workflow:
        return await _unary(self._stub.CreateWorkflow(request, **self._kw()))

    async def create_project(self, name: str) -> runs_pb2.Project:
        request = runs_pb2.CreateProjectRequest(name=name)
        return await _unary(self._stub.CreateProject(request, **self._kw()))

    async def get_project(self, project_id: str) -> runs_pb2.Project:
        request = runs_pb2.GetProjectRequest(project_id=project_id)
        return await _unary(self._stub.GetProject(request, **self._kw()))

    async def list_project_notes(
        self, project_id: str, limit: int = 50, page_token: str = ""
    ) -> runs_pb2.ListProjectNotesResponse:
        """One page of a project's notes, newest first; its `next_page_token`, when set, is
        where the next (older) page begins."""
        request = runs_pb2.ListProjectNotesRequest(
            project_id=project_id, limit=limit, page_token=page_token
        )
        return await _unary(self._stub.ListProjectNotes(request, **self._kw()))

    async def list_projects(self) -> list[runs_pb2.Project]:
        response = await _unary(
            self._stub.ListProjects(runs_pb2.ListProjectsRequest(), **self._kw())
        )
        return list(response.projects)

    async def add_repository(
        self, project_id: str, owner: str, repo: str, path: str = ""
    ) -> runs_pb2.Repository:
        request = runs_pb2.AddRepositoryRequest(
            project_id=project_id, owner=owner, repo=repo, path=path
        )
        return await _unary(self._stub.AddRepository(request, **self._kw()))

    async def add_project_note(self, project_id: str, text: str) -> runs_pb2.ProjectNote:
        request = runs_pb2.AddProjectNoteRequest(project_id=project_id, text=text)
        return await _unary(self._stub.AddProjectNote(request, **self._kw()))

    async def add_workflow_insight(self, workflow_id: str, text: str) -> runs_pb2.WorkflowInsight:
        request = runs_pb2.AddWorkflowInsightRequest(workflow_id=workflow_id, text=text)
        return await _unary(self._stub.AddWorkflowInsight(request, **self._kw()))

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

    async def get_workflow(self, workflow_id: str, *, brief: bool = False) -> pb.Workflow:
        request = runs_pb2.GetWorkflowRequest(workflow_id=workflow_id, brief=brief)
        return await _unary(self._stub.GetWorkflow(request, **self._kw()))

    async def list_workflows(self) -> list[pb.Workflow]:
        response = await _unary(
            self._stub.ListWorkflows(runs_pb2.ListWorkflowsRequest(), **self._kw())
        )
        return list(response.workflows)

    async def create_run(self, workflow_id: str) -> pb.Run:
        request = runs_pb2.CreateRunRequest(workflow_id=workflow_id)
        return await _unary(self._stub.CreateRun(request, **self._kw()))

    async def get_run(self, run_id: str, *, brief: bool = False) -> pb.Run:
        request = runs_pb2.GetRunRequest(run_id=run_id, brief=brief)
        return await _unary(self._stub.GetRun(request, **self._kw()))

    async def list_step_items(
        self, run_id: str, step_id: str, from_index: int = 0, limit: int = 0
    ) -> runs_pb2.ListStepItemsResponse:
        """One page of a step's items; its `next_index`, when set, is where the next begins."""
        request = runs_pb2.ListStepItemsRequest(
            run_id=run_id, step_id=step_id, from_index=from_index, limit=limit
        )
        return await _unary(self._stub.ListStepItems(request, **self._kw()))

    async def all_step_items(
        self, run_id: str, step_id: str, from_index: int = 0
    ) -> list[pb.StepItem]:
        """Every stored item of a step from `from_index` on, outputs included, page by page:
        the outputs a whole read (GetRun, GetWorkflow) left out (StepItem.output_left_out)."""
        items: list[pb.StepItem] = []
        index: int | None = from_index
        while index is not None:
            page = await self.list_step_items(run_id, step_id, index, 500)
            items.extend(page.items)
            index = page.next_index if page.HasField("next_index") else None
        return items

    async def list_run_events(
        self, run_id: str, types: Iterable[str], after_seq: int = 0, limit: int = 0
    ) -> runs_pb2.ListRunEventsResponse:
        """One page of a run's stored events of `types`; its `read_through_seq` is where the
        next begins, and the read is whole once it reaches `last_seq`."""
        request = runs_pb2.ListRunEventsRequest(
            run_id=run_id, after_seq=after_seq, types=list(types), limit=limit
        )
        return await _unary(self._stub.ListRunEvents(request, **self._kw()))

    async def get_step(self, step_id: str) -> pb.Step:
        """One step whole: what a whole read left out (Step.output_left_out) included."""
        request = runs_pb2.GetStepRequest(step_id=step_id)
        return await _unary(self._stub.GetStep(request, **self._kw()))

    async def fill_left_out_steps(self, steps: Iterable[pb.Step]) -> None:
        """Fill in, in place, the output and alternatives of each step a whole read left
        out (Step.output_left_out), read step by step."""
        for step in steps:
            if step.output_left_out:
                whole = await self.get_step(step.id)
                step.output = whole.output
                del step.alternatives[:]
                step.alternatives.extend(whole.alternatives)
                step.output_left_out = False

    async def list_runs(
        self, workflow_id: str = "", status: str = "", limit: int = 50
    ) -> list[pb.Run]:
        """The newest `limit` runs (at most 500); older ones: list_runs_page."""
        return list((await self.list_runs_page(workflow_id, status, limit)).runs)

    async def list_runs_page(
        self, workflow_id: str = "", status: str = "", limit: int = 50, page_token: str = ""
    ) -> runs_pb2.ListRunsResponse:
        """One page of runs, newest first; its `next_page_token`, when set, is where the
        next (older) page begins."""
        request = runs_pb2.ListRunsRequest(
            workflow_id=workflow_id, status=status, limit=limit, page_token=page_token
        )
        return await _unary(self._stub.ListRuns(request, **self._kw()))

    async def retry_step(
        self,
        step_id: str,
        cascade: bool = False,
        *,
        max_tokens: int | None = None,
        auto_continue: int | None = None,
        model: str | None = None,
        providers: Sequence[str] | None = None,
    ) -> pb.Run:
        """Reset the step (and with `cascade` every later one) and queue a run; the keyword
        arguments change the step first, None leaving a field as it is."""
        request = runs_pb2.RetryStepRequest(
            step_id=step_id,
            cascade=cascade,
            max_tokens=max_tokens,
            auto_continue=auto_continue,
            model=model,
            providers=runs_pb2.ProviderChain(names=providers) if providers is not None else None,
        )
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

    async def claim_run(
        self, run_id: str, owner: str, ttl_s: float, claim_id: str = ""
    ) -> runs_pb2.ClaimRunResponse:
        request = runs_pb2.ClaimRunRequest(
            run_id=run_id, owner=owner, lease_ttl_s=ttl_s, claim_id=claim_id
        )
        return await _unary(self._stub.ClaimRun(request, **self._kw()))

    async def heartbeat(
        self, run_id: str, token: int, ttl_s: float, timeout_s: float | None = None
    ) -> float:
        request = runs_pb2.HeartbeatRequest(run_id=run_id, token=token, lease_ttl_s=ttl_s)
        kw = self._kw() if timeout_s is None else {**self._kw(), "timeout": timeout_s}
        response = await _unary(self._stub.Heartbeat(request, **kw))
        return float(response.lease_expires_at)

    async def release_run(
        self, run_id: str, token: int, reason: str
    ) -> runs_pb2.ReleaseRunResponse:
        request = runs_pb2.ReleaseRunRequest(run_id=run_id, token=token, reason=reason)
        return await _unary(self._stub.ReleaseRun(request, **self._kw()))

    async def list_requeued_runs(self, limit: int = 0) -> list[runs_pb2.RequeuedRun]:
        request = runs_pb2.ListRequeuedRunsRequest(limit=limit)
        return list((await _unary(self._stub.ListRequeuedRuns(request, **self._kw()))).runs)

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
        batch_id: str = "",
        batch_seq: int = 0,
    ) -> runs_pb2.WriteResponse:
        request = runs_pb2.RecordRequest(
            run_id=run_id,
            token=token,
            ops=ops,
            finish_status=finish_status,
            finish_error=finish_error,
            batch_id=batch_id,
            batch_seq=batch_seq,
        )
        return await _unary(self._stub.Record(request, **self._kw()))

    async def record_many(
        self, batches: Sequence[runs_pb2.RecordRequest]
    ) -> runs_pb2.RecordManyResponse:
        request = runs_pb2.RecordManyRequest(batches=batches)
        return await _unary(self._stub.RecordMany(request, **self._kw()))

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

    async def save_artifacts(
        self,
        run_id: str,
        token: int,
        step_id: str,
        artifacts: Sequence[pb.Artifact] = (),
        findings: Sequence[pb.Finding] = (),
    ) -> runs_pb2.WriteResponse:
        request = runs_pb2.SaveArtifactsRequest(
            run_id=run_id, token=token, step_id=step_id, artifacts=artifacts, findings=findings
        )
        return await _unary(self._stub.SaveArtifacts(request, **self._kw()))

    async def start_pipeline(self, request: runs_pb2.StartPipelineRequest) -> pb.Run:
        return await _unary(self._stub.StartPipeline(request, **self._kw()))

    async def get_artifact(self, run_id: str, name: str, step_id: str = "") -> pb.Artifact:
        """The named artifact of `step_id`'s step; without one, of the last step that has it."""
        request = runs_pb2.GetArtifactRequest(run_id=run_id, name=name, step_id=step_id)
        return await _unary(self._stub.GetArtifact(request, **self._kw()))

    async def list_findings(self, run_id: str) -> list[pb.Finding]:
        request = runs_pb2.ListFindingsRequest(run_id=run_id)
        return list((await _unary(self._stub.ListFindings(request, **self._kw()))).findings)

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

    def watch_run_batches(
        self, run_id: str, after_seq: int = 0
    ) -> AsyncGenerator[Sequence[pb.RunEvent], None]:
        """`watch_run` as the server sent it: what arrived together stays together."""
        request = runs_pb2.WatchRunRequest(run_id=run_id, after_seq=after_seq)
        return _batches(self._stub.WatchRun(request, metadata=self._md))


class AdminClient:
    """Operator calls; `metadata` carries the admin key."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata, timeout_s: float = 30.0):
        self._stub = admin_pb2_grpc.AdminStub(channel)
        self._kw = {"metadata": metadata, "timeout": timeout_s}

    async def create_tenant(
        self, slug: str, name: str = "", default_providers: Sequence[str] = ()
    ) -> admin_pb2.Tenant:
        request = admin_pb2.CreateTenantRequest(
            slug=slug, name=name, default_providers=default_providers
        )
        return await _unary(self._stub.CreateTenant(request, **self._kw))

    async def list_tenants(self) -> list[admin_pb2.Tenant]:
        response = await _unary(self._stub.ListTenants(admin_pb2.ListTenantsRequest(), **self._kw))
        return list(response.tenants)

    async def set_tenant_providers(
        self, tenant: str, default_providers: Sequence[str]
    ) -> admin_pb2.Tenant:
        request = admin_pb2.SetTenantProvidersRequest(
            tenant=tenant, default_providers=default_providers
        )
        return await _unary(self._stub.SetTenantProviders(request, **self._kw))

    async def create_api_key(
        self, tenant: str, name: str, expires_at: float = 0.0
    ) -> admin_pb2.CreateApiKeyResponse:
        request = admin_pb2.CreateApiKeyRequest(tenant=tenant, name=name, expires_at=expires_at)
        return await _unary(self._stub.CreateApiKey(request, **self._kw))

    async def list_api_keys(self, tenant: str) -> list[admin_pb2.ApiKey]:
        request = admin_pb2.ListApiKeysRequest(tenant=tenant)
        return list((await _unary(self._stub.ListApiKeys(request, **self._kw))).keys)

    async def revoke_api_key(self, key_id: str) -> admin_pb2.ApiKey:
        request = admin_pb2.RevokeApiKeyRequest(key_id=key_id)
        return await _unary(self._stub.RevokeApiKey(request, **self._kw))

    async def move_project(
        self,
        project_id: str,
        to_tenant: str,
        *,
        dry_run: bool = False,
        on_conflict: str = "",
        on_persona_conflict: str = "",
    ) -> admin_pb2.MoveProjectResponse:
        request = admin_pb2.MoveProjectRequest(
            project_id=project_id,
            to_tenant=to_tenant,
            dry_run=dry_run,
            on_conflict=on_conflict,
            on_persona_conflict=on_persona_conflict,
        )
        return await _unary(self._stub.MoveProject(request, **self._kw))


class EngineClient:
    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata):
        self._stub = engine_pb2_grpc.EngineStub(channel)
        self._md = metadata

    def execute(self, run_id: str) -> AsyncGenerator[pb.RunEvent, None]:
        request = engine_pb2.ExecuteRequest(run_id=run_id)
        return _stream(self._stub.Execute(request, metadata=self._md))

    def execute_batches(self, run_id: str) -> AsyncGenerator[Sequence[pb.RunEvent], None]:
        """`execute` as the engine sent it: what arrived together stays together."""
        request = engine_pb2.ExecuteRequest(run_id=run_id)
        return _batches(self._stub.Execute(request, metadata=self._md))
