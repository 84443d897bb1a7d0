"""`/readyz`: the gateway can serve only while runs and the engine answer SERVING (`/healthz`
says the process is up, whatever happens behind it)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from nyxflow.grpc_server import is_serving

# Each service's health Check may take this long; one that does not answer is not ready.
CHECK_TIMEOUT_S = 1.0

router = APIRouter()


class Readiness(BaseModel):
    status: str
    not_ready: list[str] | None = None


async def not_ready(channels: Mapping[str, grpc.aio.Channel], timeout_s: float) -> list[str]:
    """The names of the services that do not answer SERVING, asked at once."""
    answers = await asyncio.gather(*(is_serving(c, timeout_s) for c in channels.values()))
    return [name for name, ok in zip(channels, answers, strict=True) if not ok]


@router.get(
    "/readyz",
    tags=["health"],
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "`not_ready` names the services."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready while runs and the engine both answer SERVING; no key, like /healthz."""
    state = request.app.state
    channels = {"runs": state.runs_channel, "engine": state.engine_channel}
    down = await not_ready(channels, CHECK_TIMEOUT_S)
    if down:
        return JSONResponse({"status": "not ready", "not_ready": down}, status_code=503)
    return JSONResponse({"status": "ready"})
