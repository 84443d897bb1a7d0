"""/v1/steps: retry (and retry from here), choose an alternative."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from nyxflow.templates import INT32_MAX
from nyxflow_gateway import convert
from nyxflow_gateway.deps import Clients

router = APIRouter(prefix="/v1/steps", tags=["steps"])


class RetryBody(BaseModel):
    cascade: bool = False  # "retry from here": every later step too


class SelectBody(BaseModel):
    index: int = Field(ge=0, le=INT32_MAX)


@router.post("/{step_id}/retry", status_code=201)
async def retry_step(
    step_id: str, services: Clients, body: RetryBody | None = None
) -> dict[str, Any]:
    cascade = body.cascade if body is not None else False
    return convert.run(await services.runs.retry_step(step_id, cascade))


@router.post("/{step_id}/select")
async def select_alternative(step_id: str, body: SelectBody, services: Clients) -> dict[str, Any]:
    return convert.step(await services.runs.select_alternative(step_id, body.index))
