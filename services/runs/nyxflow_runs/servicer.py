"""The Runs gRPC service: proto in, store call, proto out. No SQL and no rules here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from google.protobuf.message import Message

from nyxflow import events as ev
from nyxflow import metrics, pipelines
from nyxflow.batches import batched
from nyxflow.constants import MAX_RECORD_GROUP, SCAN_MAXIMA
from nyxflow.errors import InvalidArgument, NyxflowError
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2, runs_pb2_grpc
from nyxflow_runs import convert
from nyxflow_runs import validation as valid
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.polling import RunPoller
from nyxflow_runs.store import Draft, Store
from nyxflow_runs.store.hot_path import Entry
from nyxflow_runs.store.paging import PageEnd
from nyxflow_runs.store.record import Batch, Written
from nyxflow_runs.store.workflows import MAX_LIST, step_row
from nyxflow_runs.tenancy import Tenancy
from nyxflow_runs.watch import watch_run

Ctx: TypeAlias = grpc.aio.ServicerContext
MAX_SEQ = 2**31 - 1
MAX_GROUP = (
    MAX_RECORD_GROUP  # batches per RecordMany: an engine sends what its runs wrote meanwhile
)
# ListStepItems per call: a page's batch of newly finished items fits many times over, and a
# call stays well under the gRPC message limit (one longer item goes alone).
ITEMS_DEFAULT, ITEMS_MAX = 100, 500
ITEMS_MAX_BYTES = 1_000_000
# ListRunEvents per call, likewise.
EVENTS_DEFAULT, EVENTS_MAX = 100, 500
EVENTS_MAX_BYTES = 1_000_000
# ListRuns per call; older runs are reached page by page (next_page_token).
RUNS_DEFAULT, RUNS_MAX = 50, MAX_LIST
# ListProjectNotes per call, likewise (and no more than about 1,000,000 characters).
NOTES_DEFAULT, NOTES_MAX = 50, 500


def _response(written: Written) -> runs_pb2.WriteResponse:
    return runs_pb2.WriteResponse(events=written.events, pause_requested=written.pause_requested)


def _batch(request: runs_pb2.RecordRequest) -> Batch:
    valid.token(request.token)
    # Every string, though the engine scrubs its text: a NUL fails its own batch here, not
    # the group's statement on PostgreSQL (INTERNAL for every run in it), and is refused
    # on SQLite alike (it stored it).
    valid.no_nul(request)
    batch_id = valid.text(request.batch_id, "batch_id", 64, required=False)
    batch_seq = valid.bounded(request.batch_seq, 0, MAX_SEQ, "batch_seq")  # an int32 column
    return Batch.of(request.ops, request.finish_status, request.finish_error, batch_id, batch_seq)


def _refused(error: NyxflowError) -> runs_pb2.RecordResult:
    return runs_pb2.RecordResult(
        code=error.code.value[0], message=error.message, field=error.field or ""
    )


class RunsServicer(runs_pb2_grpc.RunsServicer):
    def __init__(
        self,
        store: Store,
        bus: LocalBus,
        tenancy: Tenancy,
        poller: RunPoller,
        repos_root: str | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._tenancy = tenancy
        self._poller = poller
        self._repos_root = repos_root

    async def _tenant(self, request: Message, context: Ctx) -> str:
        """The caller's tenant, then the request's strings checked for NUL."""
        tenant = await self._tenancy.tenant_of(context)
        valid.no_nul(request)
        return tenant

    def _engine(self, request: Message, context: Ctx) -> str:
        """The engine's tenant (internal credentials only), then the request checked for NUL.
        Record and RecordMany check each batch alone (`_batch`): one NUL refuses its own
        batch, not the group."""
        tenant = self._tenancy.engine_tenant_of(context)
        valid.no_nul(request)
        return tenant

    # --- workflows and personas -------------------------------------------------------

    async def CreateWorkflow(
        self, request: runs_pb2.CreateWorkflowRequest, context: Ctx
    ) -> pb.Workflow:
        tenant = await self._tenant(request, context)
        name = valid.workflow_name(request.name)
        personas = {p.name: p.system_prompt for p in await self._store.list_personas(tenant)}
        drafts = valid.step_drafts(request.steps, personas)
        chain = valid.provider_chain(request.default_providers, "default_providers")
        policy = valid.on_orphan(request.on_orphan)
        # Weighed before the insert: an answer the channel refuses comes after the commit.
        rows = [step_row(tenant, "", i, d) for i, d in enumerate(drafts)]
        valid.answer_fits(convert.drafted(rows, personas, chain))
        return await self._store.create_workflow(
            tenant,
            name,
            drafts,
            request.consistency_check,
            chain,
            request.project_id or None,
            policy,
        )

    async def GetWorkflow(self, request: runs_pb2.GetWorkflowRequest, context: Ctx) -> pb.Workflow:
        tenant = await self._tenant(request, context)
        workflow_id = valid.require_id(request.workflow_id, "workflow_id")
        return await self._store.get_workflow(tenant, workflow_id, request.brief)

    async def ListWorkflows(
        self, request: runs_pb2.ListWorkflowsRequest, context: Ctx
    ) -> runs_pb2.ListWorkflowsResponse:
        tenant = await self._tenant(request, context)
        return runs_pb2.ListWorkflowsResponse(workflows=await self._store.list_workflows(tenant))

    async def DeleteWorkflow(
        self, request: runs_pb2.DeleteWorkflowRequest, context: Ctx
    ) -> runs_pb2.DeleteWorkflowResponse:
        tenant = await self._tenant(request, context)
        workflow_id = valid.require_id(request.workflow_id, "workflow_id")
        await self._store.delete_workflow(tenant, workflow_id)
        return runs_pb2.DeleteWorkflowResponse()

    async def DuplicateWorkflow(
        self, request: runs_pb2.DuplicateWorkflowRequest, context: Ctx
    ) -> pb.Workflow:
        tenant = await self._tenant(request, context)
        workflow_id = valid.require_id(request.workflow_id, "workflow_id")
        name = valid.workflow_name(request.name) if request.name.strip() else ""
        return await self._store.duplicate_workflow(tenant, workflow_id, name)

    # --- projects -------------------------------------------------------------------------

    async def CreateProject(
        self, request: runs_pb2.CreateProjectRequest, context: Ctx
    ) -> runs_pb2.Project:
        tenant = await self._tenant(request, context)
        name = valid.single_line(valid.text(request.name, "name", 200), "name")
        return await self._store.create_project(tenant, name)

    async def GetProject(
        self, request: runs_pb2.GetProjectRequest, context: Ctx
    ) -> runs_pb2.Project:
        tenant = await self._tenant(request, context)
        project_id = valid.require_id(request.project_id, "project_id")
        return await self._store.get_project(tenant, project_id)

    async def ListProjects(
        self, request: runs_pb2.ListProjectsRequest, context: Ctx
    ) -> runs_pb2.ListProjectsResponse:
        tenant = await self._tenant(request, context)
        return runs_pb2.ListProjectsResponse(projects=await self._store.list_projects(tenant))

    async def AddRepository(
        self, request: runs_pb2.AddRepositoryRequest, context: Ctx
    ) -> runs_pb2.Repository:
        tenant = await self._tenant(request, context)
        project_id = valid.require_id(request.project_id, "project_id")
        # one line each: a pipeline's workflow is named after them
        owner = valid.single_line(valid.text(request.owner, "owner", 200), "owner")
        repo = valid.single_line(valid.text(request.repo, "repo", 200), "repo")
        path = valid.local_path(request.path, "path", 4096, self._repos_root, tenant)
        return await self._store.add_repository(tenant, project_id, owner, repo, path)

    async def AddProjectNote(
        self, request: runs_pb2.AddProjectNoteRequest, context: Ctx
    ) -> runs_pb2.ProjectNote:
        tenant = await self._tenant(request, context)
        project_id = valid.require_id(request.project_id, "project_id")
        text = valid.text(request.text, "text", 100_000)
        return await self._store.add_project_note(tenant, project_id, text)

    async def ListProjectNotes(
        self, request: runs_pb2.ListProjectNotesRequest, context: Ctx
    ) -> runs_pb2.ListProjectNotesResponse:
        tenant = await self._tenant(request, context)
        project_id = valid.require_id(request.project_id, "project_id")
        limit = valid.bounded(request.limit, 0, NOTES_MAX, "limit") or NOTES_DEFAULT
        after = PageEnd.of(request.page_token, "page_token") if request.page_token else None
        notes, more = await self._store.list_project_notes(tenant, project_id, limit, after)
        return runs_pb2.ListProjectNotesResponse(
            notes=notes, next_page_token=more.token() if more else ""
        )

    async def AddWorkflowInsight(
        self, request: runs_pb2.AddWorkflowInsightRequest, context: Ctx
    ) -> runs_pb2.WorkflowInsight:
        tenant = await self._tenant(request, context)
        workflow_id = valid.require_id(request.workflow_id, "workflow_id")
        text = valid.text(request.text, "text", 100_000)
        return await self._store.add_workflow_insight(tenant, workflow_id, text)

    async def ListPersonas(
        self, request: runs_pb2.ListPersonasRequest, context: Ctx
    ) -> runs_pb2.ListPersonasResponse:
        tenant = await self._tenant(request, context)
        return runs_pb2.ListPersonasResponse(personas=await self._store.list_personas(tenant))

    async def PutPersona(self, request: runs_pb2.PutPersonaRequest, context: Ctx) -> pb.Persona:
        tenant = await self._tenant(request, context)
        persona = pb.Persona()
        persona.CopyFrom(request.persona)
        persona.name = valid.single_line(
            valid.text(persona.name, "persona.name", 100), "persona.name"
        )
        # Stored as checked: a role of 200 characters and a space passed, and was cut.
        persona.role = valid.text(persona.role, "persona.role", 200, required=False)
        return await self._store.put_persona(tenant, persona)

    # --- runs and operations ------------------------------------------------------------

    async def CreateRun(self, request: runs_pb2.CreateRunRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenant(request, context)
        workflow_id = valid.require_id(request.workflow_id, "workflow_id")
        return await self._store.create_run(tenant, workflow_id)

    async def GetRun(self, request: runs_pb2.GetRunRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenant(request, context)
        run_id = valid.require_id(request.run_id, "run_id")
        return await self._store.get_run(tenant, run_id, brief=request.brief)

    async def ListRuns(
        self, request: runs_pb2.ListRunsRequest, context: Ctx
    ) -> runs_pb2.ListRunsResponse:
        tenant = await self._tenant(request, context)
        limit = valid.bounded(request.limit, 0, RUNS_MAX, "limit") or RUNS_DEFAULT
        if request.status and request.status not in ev.RUN_STATUSES:
            known = ", ".join(sorted(ev.RUN_STATUSES))
            raise InvalidArgument(f"must be one of {known}", field="status")
        before = PageEnd.of(request.page_token, "page_token") if request.page_token else None
        runs, more = await self._store.list_runs(
            tenant, request.workflow_id, request.status, limit, before
        )
        return runs_pb2.ListRunsResponse(runs=runs, next_page_token=more.token() if more else "")

    async def ListStepItems(
        self, request: runs_pb2.ListStepItemsRequest, context: Ctx
    ) -> runs_pb2.ListStepItemsResponse:
        tenant = await self._tenant(request, context)
        run_id = valid.require_id(request.run_id, "run_id")
        step_id = valid.require_id(request.step_id, "step_id")
        if request.from_index < 0:
            raise InvalidArgument("must not be negative", field="from_index")
        limit = valid.bounded(request.limit, 0, ITEMS_MAX, "limit") or ITEMS_DEFAULT
        items, next_index = await self._store.list_step_items(
            tenant, run_id, step_id, request.from_index, limit, ITEMS_MAX_BYTES
        )
        return runs_pb2.ListStepItemsResponse(items=items, next_index=next_index)

    async def ListRunEvents(
        self, request: runs_pb2.ListRunEventsRequest, context: Ctx
    ) -> runs_pb2.ListRunEventsResponse:
        tenant = await self._tenant(request, context)
        run_id = valid.require_id(request.run_id, "run_id")
        if request.after_seq < 0:
            raise InvalidArgument("must not be negative", field="after_seq")
        types = set(request.types)
        if not types:
            raise InvalidArgument("name at least one event type", field="types")
        if unknown := sorted(types - ev.EVENT_TYPES):
            known = ", ".join(sorted(ev.EVENT_TYPES))
            raise InvalidArgument(
                f"unknown event type {unknown[0]!r}; known: {known}", field="types"
            )
        limit = valid.bounded(request.limit, 0, EVENTS_MAX, "limit") or EVENTS_DEFAULT
        # Seqs are int32 in the database: a larger after_seq reads nothing, as it would.
        after_seq = min(request.after_seq, MAX_SEQ)
        events, through, last_seq = await self._store.events_of_types(
            tenant, run_id, after_seq, types, limit, EVENTS_MAX_BYTES
        )
        return runs_pb2.ListRunEventsResponse(
            events=events, read_through_seq=through, last_seq=last_seq
        )

    async def GetStep(self, request: runs_pb2.GetStepRequest, context: Ctx) -> pb.Step:
        tenant = await self._tenant(request, context)
        return await self._store.get_step(tenant, valid.require_id(request.step_id, "step_id"))

    async def RetryStep(self, request: runs_pb2.RetryStepRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenant(request, context)
        step_id = valid.require_id(request.step_id, "step_id")
        return await self._store.retry_step(
            tenant, step_id, request.cascade, valid.step_edit(request)
        )

    async def ResumeWorkflow(self, request: runs_pb2.ResumeWorkflowRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenant(request, context)
        workflow_id = valid.require_id(request.workflow_id, "workflow_id")
        return await self._store.resume_workflow(tenant, workflow_id)

    async def RerunWorkflow(self, request: runs_pb2.RerunWorkflowRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenant(request, context)
        workflow_id = valid.require_id(request.workflow_id, "workflow_id")
        return await self._store.rerun_workflow(tenant, workflow_id)

    async def PauseRun(self, request: runs_pb2.PauseRunRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenant(request, context)
        return await self._store.pause_run(tenant, valid.require_id(request.run_id, "run_id"))

    async def CancelRun(self, request: runs_pb2.CancelRunRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenant(request, context)
        return await self._store.cancel_run(tenant, valid.require_id(request.run_id, "run_id"))

    async def SelectAlternative(
        self, request: runs_pb2.SelectAlternativeRequest, context: Ctx
    ) -> pb.Step:
        tenant = await self._tenant(request, context)
        step_id = valid.require_id(request.step_id, "step_id")
        return await self._store.select_alternative(tenant, step_id, request.index)

    # --- the engine's calls -------------------------------------------------------------

    async def ClaimRun(
        self, request: runs_pb2.ClaimRunRequest, context: Ctx
    ) -> runs_pb2.ClaimRunResponse:
        # The caller's own key may claim (it may start its runs anyway); every later write
        # of the run needs the engine's internal credentials.
        tenant = await self._tenant(request, context)
        run_id = valid.require_id(request.run_id, "run_id")
        owner = valid.require_id(request.owner, "owner", 200)
        ttl = valid.lease_ttl(request.lease_ttl_s)
        claim_id = valid.text(request.claim_id, "claim_id", 64, required=False)
        claim = await self._store.claim_run(tenant, run_id, owner, ttl, claim_id)
        return runs_pb2.ClaimRunResponse(
            won=claim.won,
            token=claim.token,
            run=claim.run,
            events=claim.events,
            earlier_left_out=claim.earlier_left_out,
        )

    async def Heartbeat(
        self, request: runs_pb2.HeartbeatRequest, context: Ctx
    ) -> runs_pb2.HeartbeatResponse:
        tenant = self._engine(request, context)
        ttl = valid.lease_ttl(request.lease_ttl_s)
        expires = await self._store.heartbeat(
            tenant, request.run_id, valid.token(request.token), ttl
        )
        return runs_pb2.HeartbeatResponse(lease_expires_at=expires)

    async def AppendEvents(
        self, request: runs_pb2.AppendEventsRequest, context: Ctx
    ) -> runs_pb2.WriteResponse:
        tenant = self._engine(request, context)
        drafts = Draft.from_pb(request.events)
        return _response(
            await self._store.append_events(
                tenant, request.run_id, valid.token(request.token), drafts
            )
        )

    async def UpdateStep(
        self, request: runs_pb2.UpdateStepRequest, context: Ctx
    ) -> runs_pb2.WriteResponse:
        tenant = self._engine(request, context)
        written = await self._store.update_step(
            tenant,
            request.run_id,
            valid.token(request.token),
            valid.require_id(request.step_id, "step_id"),
            request.change,
            Draft.from_pb(request.events),
        )
        return _response(written)

    async def PutStepItem(
        self, request: runs_pb2.PutStepItemRequest, context: Ctx
    ) -> runs_pb2.WriteResponse:
        tenant = self._engine(request, context)
        written = await self._store.put_step_item(
            tenant,
            request.run_id,
            valid.token(request.token),
            valid.require_id(request.step_id, "step_id"),
            request.item,
            Draft.from_pb(request.events),
        )
        return _response(written)

    async def GenerateSteps(
        self, request: runs_pb2.GenerateStepsRequest, context: Ctx
    ) -> runs_pb2.WriteResponse:
        tenant = self._engine(request, context)
        written = await self._store.generate_steps(
            tenant,
            request.run_id,
            valid.token(request.token),
            valid.require_id(request.after_step_id, "after_step_id"),
            request.steps,
            Draft.from_pb(request.events),
        )
        return _response(written)

    async def SaveArtifacts(
        self, request: runs_pb2.SaveArtifactsRequest, context: Ctx
    ) -> runs_pb2.WriteResponse:
        tenant = self._engine(request, context)
        valid.fits(request.step_id, "step_id", 36)
        for i, artifact in enumerate(request.artifacts):
            valid.text(artifact.name, f"artifacts[{i}].name", 200)
            valid.fits(artifact.media_type, f"artifacts[{i}].media_type", 100)
        for i, finding in enumerate(request.findings):
            valid.fits(finding.severity, f"findings[{i}].severity", 20)
            valid.fits(finding.category, f"findings[{i}].category", 100)
        await self._store.save_artifacts(
            tenant,
            valid.require_id(request.run_id, "run_id"),
            valid.token(request.token),
            request.step_id,
            request.artifacts,
            request.findings,
        )
        return runs_pb2.WriteResponse()

    async def ReleaseRun(
        self, request: runs_pb2.ReleaseRunRequest, context: Ctx
    ) -> runs_pb2.ReleaseRunResponse:
        tenant = self._engine(request, context)
        run_id = valid.require_id(request.run_id, "run_id")
        reason = valid.text(request.reason, "reason", 1_000, required=False)
        status, written = await self._store.release_run(
            tenant, run_id, valid.token(request.token), reason
        )
        if status == ev.PENDING:
            metrics.RUNS_REQUEUED.labels(cause="drained").inc()
        return runs_pb2.ReleaseRunResponse(written=_response(written), status=status)

    async def ListRequeuedRuns(
        self, request: runs_pb2.ListRequeuedRunsRequest, context: Ctx
    ) -> runs_pb2.ListRequeuedRunsResponse:
        self._tenancy.require_engine(context)
        limit = valid.bounded(request.limit, 0, 1_000, "limit")
        rows = await self._store.list_requeued_all_tenants(limit)
        return runs_pb2.ListRequeuedRunsResponse(
            runs=[runs_pb2.RequeuedRun(run_id=r, tenant_id=t) for r, t in rows]
        )

    # --- code pipelines ---------------------------------------------------------------------

    async def StartPipeline(self, request: runs_pb2.StartPipelineRequest, context: Ctx) -> pb.Run:
        tenant = await self._tenant(request, context)
        valid.require_id(request.repository_id, "repository_id")
        pipelines.validate(request.pipeline, request.goal)
        valid.bounded(request.max_files, 0, SCAN_MAXIMA["max_files"], "max_files")
        valid.bounded(request.max_bytes, 0, SCAN_MAXIMA["max_bytes"], "max_bytes")
        valid.text(request.goal, "goal", 10_000, required=False)
        request.test_command = valid.command(request.test_command, "test_command", 1_000)
        chain = valid.provider_chain(request.providers, "providers")
        params = valid.json_object(request.params_json, "params")
        return await self._store.start_pipeline(tenant, request, chain, params)

    async def GetArtifact(self, request: runs_pb2.GetArtifactRequest, context: Ctx) -> pb.Artifact:
        tenant = await self._tenant(request, context)
        run_id = valid.require_id(request.run_id, "run_id")
        name = valid.require_id(request.name, "name")
        step_id = valid.fits(request.step_id, "step_id", 36)
        return await self._store.get_artifact(tenant, run_id, name, step_id)

    async def ListFindings(
        self, request: runs_pb2.ListFindingsRequest, context: Ctx
    ) -> runs_pb2.ListFindingsResponse:
        tenant = await self._tenant(request, context)
        run_id = valid.require_id(request.run_id, "run_id")
        return runs_pb2.ListFindingsResponse(
            findings=await self._store.list_findings(tenant, run_id)
        )

    async def Record(self, request: runs_pb2.RecordRequest, context: Ctx) -> runs_pb2.WriteResponse:
        tenant = self._tenancy.engine_tenant_of(context)
        batch = _batch(request)
        return _response(await self._store.record(tenant, request.run_id, request.token, batch))

    async def RecordMany(
        self, request: runs_pb2.RecordManyRequest, context: Ctx
    ) -> runs_pb2.RecordManyResponse:
        tenant = self._tenancy.engine_tenant_of(context)
        if len(request.batches) > MAX_GROUP:
            raise InvalidArgument(f"at most {MAX_GROUP} batches per call", field="batches")
        results: dict[int, runs_pb2.RecordResult] = {}
        entries: list[Entry] = []
        positions: list[int] = []
        for i, b in enumerate(request.batches):
            try:
                batch = _batch(b)
            except NyxflowError as error:
                error.field = f"batches[{i}].{error.field}" if error.field else f"batches[{i}]"
                results[i] = _refused(error)
                continue
            entries.append(Entry(b.run_id, b.token, batch))
            positions.append(i)
        for i, outcome in zip(
            positions, await self._store.record_many(tenant, entries), strict=True
        ):
            if isinstance(outcome, NyxflowError):
                results[i] = _refused(outcome)
            else:
                results[i] = runs_pb2.RecordResult(written=_response(outcome))
        return runs_pb2.RecordManyResponse(
            results=[results[i] for i in range(len(request.batches))]
        )

    async def FinishRun(
        self, request: runs_pb2.FinishRunRequest, context: Ctx
    ) -> runs_pb2.WriteResponse:
        tenant = self._engine(request, context)
        written = await self._store.finish_run(
            tenant,
            request.run_id,
            valid.token(request.token),
            request.status,
            request.error,
            Draft.from_pb(request.events),
        )
        return _response(written)

    async def WatchRun(
        self, request: runs_pb2.WatchRunRequest, context: Ctx
    ) -> AsyncIterator[pb.RunEventBatch]:
        # The key is held, not only checked at the start: a watch lasts as long as its run
        # (hours), and a key revoked or expired meanwhile must stop receiving its events.
        tenant, key = await self._tenancy.hold_key(context)
        try:
            valid.no_nul(request)
            run_id = valid.require_id(request.run_id, "run_id")
            if request.after_seq < 0:
                raise InvalidArgument("must not be negative", field="after_seq")
            after_seq = min(request.after_seq, MAX_SEQ)  # no run has more; the column is int32
            async for events in watch_run(
                self._store, self._bus, self._poller, tenant, run_id, after_seq, key.check
            ):
                key.check()
                for batch in batched(events):
                    yield batch
        finally:
            self._tenancy.release(key)
