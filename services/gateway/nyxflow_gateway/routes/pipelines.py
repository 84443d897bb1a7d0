"""Code pipelines: start one over a repository; download its patch, list its findings."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import Field, StrictInt

from nyxflow.constants import SCAN_MAXIMA
from nyxflow.errors import ResourceExhausted
from nyxflow.templates import Text
from nyxflow.v1 import runs_pb2
from nyxflow_gateway import convert, errors
from nyxflow_gateway.deps import Clients
from nyxflow_gateway.routes import Body

router = APIRouter(tags=["pipelines"])
MAX_PARAMS_BYTES = 1_000_000


class PipelineBody(Body):
    pipeline: Literal["code-analysis", "auto-fix", "refactor"]
    goal: str = Field(default="", max_length=10_000)
    test_command: str = Field(default="", max_length=1_000)
    max_files: StrictInt = Field(default=0, ge=0, le=SCAN_MAXIMA["max_files"])
    max_bytes: StrictInt = Field(default=0, ge=0, le=SCAN_MAXIMA["max_bytes"])
    providers: list[Text] = Field(default_factory=list, max_length=8)
    params: dict[str, Any] = Field(default_factory=dict)  # for the model steps


@router.post("/v1/repositories/{repository_id}/pipelines", status_code=201)
@errors.sent_as({"params_json": "params"})
async def start_pipeline(
    repository_id: str, body: PipelineBody, services: Clients
) -> dict[str, Any]:
    """A new workflow from the built-in template and its pending run; follow its events to
    start it. Patches are never applied to the repository: download them instead."""
    fields = body.model_dump(exclude={"params"})
    params = json.dumps(body.params)
    if len(params) > MAX_PARAMS_BYTES:
        raise ResourceExhausted(f"at most {MAX_PARAMS_BYTES} bytes of JSON", field="params")
    request = runs_pb2.StartPipelineRequest(
        repository_id=repository_id, params_json=params, **fields
    )
    return convert.run(await services.runs.start_pipeline(request))


@router.get(
    "/v1/runs/{run_id}/artifacts/{name}",
    response_class=Response,
    responses={200: {"content": {"text/x-diff": {}, "application/json": {}}}},
)
async def get_artifact(
    run_id: str,
    name: str,
    services: Clients,
    step_id: Annotated[str, Query(max_length=36)] = "",
) -> Response:
    """The named artifact of `step_id`'s step; without one, of the last step (by position)
    that stored one. `X-Nyxflow-Step-Id` says whose it is."""
    artifact = await services.runs.get_artifact(run_id, name, step_id)
    return Response(
        artifact.content,
        media_type=artifact.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{_safe(run_id)}-{_safe(name)}"',
            "X-Nyxflow-Step-Id": _safe(artifact.step_id),
        },
    )


@router.get("/v1/runs/{run_id}/findings")
async def list_findings(run_id: str, services: Clients) -> dict[str, Any]:
    return {"findings": [convert.finding(f) for f in await services.runs.list_findings(run_id)]}


def _safe(part: str) -> str:
    """A header value that cannot be broken out of."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", part)[:100]
