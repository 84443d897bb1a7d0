"""Request dependencies: the caller's API key and per-request clients carrying it.

All `async def`: FastAPI runs a plain `def` dependency in a worker thread, a thread hop on
every request for what is a dictionary lookup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from nyxflow.auth import bearer_metadata
from nyxflow.client import EngineClient, RunsClient
from nyxflow.errors import Unauthenticated


def _bearer(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


async def api_key(request: Request) -> str:
    """The key from `Authorization: Bearer`; runs checks it, not the gateway."""
    key = _bearer(request)
    if key is None:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    return key


async def stream_api_key(
    request: Request,
    access_token: Annotated[str | None, Query(description="for EventSource")] = None,
) -> str:
    """EventSource cannot set headers, so the stream also takes `?access_token=`."""
    key = _bearer(request) or access_token
    if not key:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    return key


@dataclass(frozen=True)
class Services:
    runs: RunsClient
    engine: EngineClient


def _services(request: Request, key: str) -> Services:
    state = request.app.state
    md = bearer_metadata(key)
    return Services(
        RunsClient(state.runs_channel, md, state.settings.rpc_timeout_s),
        EngineClient(state.engine_channel, md),
    )


async def services(request: Request, key: Annotated[str, Depends(api_key)]) -> Services:
    return _services(request, key)


async def stream_services(
    request: Request, key: Annotated[str, Depends(stream_api_key)]
) -> Services:
    return _services(request, key)


Clients = Annotated[Services, Depends(services)]
StreamClients = Annotated[Services, Depends(stream_services)]
