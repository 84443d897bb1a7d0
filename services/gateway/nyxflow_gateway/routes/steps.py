"""/v1/steps: one step whole, retry (and retry from here, with changed limits or providers),
choose an alternative."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field, StrictBool, StrictInt

from nyxflow.templates import INT32_MAX, Text
from nyxflow_gateway import convert, errors
from nyxflow_gateway.deps import Clients
from nyxflow_gateway.routes import Body

router = APIRouter(prefix="/v1/steps", tags=["steps"])


class RetryBody(Body):
    cascade: StrictBool = False  # "retry from here": every later step too
    # Changes to the step before it runs again; left out = as it was. Runs checks them too
    # (known providers, bounds), naming the field.
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=INT32_MAX)
    auto_continue: StrictInt | None = Field(default=None, ge=0, le=INT32_MAX)
    model: str | None = Field(default=None, max_length=200)
    providers: list[Text] | None = Field(
        default=None, max_length=16, description="the step's chain; [] = the workflow's"
    )


class SelectBody(Body):
    index: StrictInt = Field(ge=0, le=INT32_MAX)


@router.get("/{step_id}")
async def get_step(step_id: str, services: Clients) -> dict[str, Any]:
    """One step whole: its output and alternatives even where the run's or workflow's read
    left them out (`output: null`, `output_left_out`: past that read's budget)."""
    return convert.step(await services.runs.get_step(step_id))


@router.post("/{step_id}/retry", status_code=201)
@errors.sent_as({"providers.names": "providers"})  # a ProviderChain: set, or not
async def retry_step(
    step_id: str, services: Clients, body: RetryBody | None = None
) -> dict[str, Any]:
    body = body or RetryBody()
    run = await services.runs.retry_step(
        step_id,
        body.cascade,
        max_tokens=body.max_tokens,
        auto_continue=body.auto_continue,
        model=body.model,
        providers=body.providers,
    )
    return convert.run(run)


@router.post("/{step_id}/select")
async def select_alternative(step_id: str, body: SelectBody, services: Clients) -> dict[str, Any]:
    return convert.step(await services.runs.select_alternative(step_id, body.index))
