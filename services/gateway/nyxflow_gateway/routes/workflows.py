"""/v1/workflows: create (JSON or a YAML/JSON template), list, show, duplicate, delete,
and the workflow-level operations that start a new run (run, resume, re-run)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field

from nyxflow.errors import InvalidArgument, ResourceExhausted
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.templates import WorkflowTemplate, parse_template
from nyxflow_gateway import convert, errors
from nyxflow_gateway.deps import Clients
from nyxflow_gateway.routes import Body, NoBody

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])
# A template's steps are StepSpecs, with their params as JSON text.
SENT_AS = errors.sent_as({"steps[].params_json": "steps[].params"})
MAX_TEMPLATE_BYTES = 1_000_000
MAX_MESSAGE_BYTES = int(dict(CHANNEL_OPTIONS)["grpc.max_send_message_length"])


class DuplicateBody(Body):
    name: str = Field(default="", max_length=200)


class InsightBody(Body):
    text: str = Field(min_length=1, max_length=100_000)


async def _create(services: Clients, template: WorkflowTemplate) -> dict[str, Any]:
    request = template.to_request()
    if request.ByteSize() > MAX_MESSAGE_BYTES:  # the channel would refuse it: say so here
        raise ResourceExhausted(f"at most {MAX_MESSAGE_BYTES} bytes as a message", field="body")
    return convert.workflow(await services.runs.create_workflow_from(request))


@router.post("", status_code=201)
@SENT_AS
async def create_workflow(body: WorkflowTemplate, services: Clients) -> dict[str, Any]:
    return await _create(services, body)


@router.post(
    "/import",
    status_code=201,
    openapi_extra={
        "requestBody": {"content": {"application/yaml": {"schema": {"type": "string"}}}}
    },
)
@SENT_AS
async def import_workflow(request: Request, services: Clients) -> dict[str, Any]:
    """Create from a template's text, YAML or JSON, as pasted or read from a file."""
    raw = bytearray()
    async for chunk in request.stream():  # refused, not cut: a cut template may still parse
        raw += chunk
        if len(raw) > MAX_TEMPLATE_BYTES:
            raise ResourceExhausted(f"at most {MAX_TEMPLATE_BYTES} bytes", field="template")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:  # refused, as the CLI does: U+FFFD would be stored
        raise InvalidArgument(f"not UTF-8 text (byte {error.start})", field="template") from None
    # PyYAML is pure Python: a 1 MB template takes it seconds, which on the event loop stopped
    # every other request and stream meanwhile.
    return await _create(services, await asyncio.to_thread(parse_template, text))


@router.get("")
async def list_workflows(services: Clients) -> dict[str, Any]:
    return {"workflows": [convert.workflow(w) for w in await services.runs.list_workflows()]}


@router.get("/{workflow_id}")
async def get_workflow(workflow_id: str, services: Clients, brief: bool = False) -> dict[str, Any]:
    """`brief`: the steps' definitions and states without what they produced (output,
    alternatives, items), for a page that has the run's results from the run already."""
    return convert.workflow(await services.runs.get_workflow(workflow_id, brief=brief))


@router.delete("/{workflow_id}", status_code=204)
async def delete_workflow(workflow_id: str, services: Clients) -> Response:
    await services.runs.delete_workflow(workflow_id)
    return Response(status_code=204)


@router.post("/{workflow_id}/duplicate", status_code=201)
async def duplicate_workflow(
    workflow_id: str, services: Clients, body: DuplicateBody | None = None
) -> dict[str, Any]:
    name = body.name if body is not None else ""
    return convert.workflow(await services.runs.duplicate_workflow(workflow_id, name))


@router.post("/{workflow_id}/runs", status_code=201)
async def create_run(
    workflow_id: str, services: Clients, body: NoBody | None = None
) -> dict[str, Any]:
    return convert.run(await services.runs.create_run(workflow_id))


@router.get("/{workflow_id}/runs")
async def list_workflow_runs(workflow_id: str, services: Clients) -> dict[str, Any]:
    # runs answers 404 for a missing or another tenant's workflow.
    return {"runs": [convert.run(r) for r in await services.runs.list_runs(workflow_id)]}


@router.post("/{workflow_id}/resume", status_code=201)
async def resume_workflow(
    workflow_id: str, services: Clients, body: NoBody | None = None
) -> dict[str, Any]:
    return convert.run(await services.runs.resume_workflow(workflow_id))


@router.post("/{workflow_id}/rerun", status_code=201)
async def rerun_workflow(
    workflow_id: str, services: Clients, body: NoBody | None = None
) -> dict[str, Any]:
    return convert.run(await services.runs.rerun_workflow(workflow_id))


@router.post("/{workflow_id}/insights", status_code=201)
async def add_insight(workflow_id: str, body: InsightBody, services: Clients) -> dict[str, Any]:
    return convert.insight(await services.runs.add_workflow_insight(workflow_id, body.text))
