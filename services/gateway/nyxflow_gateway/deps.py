"""Request dependencies: the caller's API key and per-request clients carrying it.

All `async def`: FastAPI runs a plain `def` dependency in a worker thread, a thread hop on
every request for what is a dictionary lookup."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import grpc
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from nyxflow.auth import bearer_metadata, checked_key
from nyxflow.client import EngineClient, RunsClient
from nyxflow.errors import Unauthenticated

# Declared as FastAPI security schemes so that the OpenAPI document says which operations take
# a key and how; neither raises (auto_error=False): a missing key is this module's JSON 401.
# HTTPBearer takes the scheme before the first space, in any case, and strips the key.
BEARER = HTTPBearer(
    scheme_name="bearer", description="the API key: `Authorization: Bearer <key>`", auto_error=False
)
ACCESS_TOKEN = APIKeyQuery(
    name="access_token",
    scheme_name="access_token",
    description="the API key, for EventSource, which cannot set headers (the event stream only)",
    auto_error=False,
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def _checked(key: str | None) -> str:
    if not key:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    return checked_key(key)


async def api_key(bearer: Bearer) -> str:
    """The key from `Authorization: Bearer`. Runs checks the key, not the gateway; only its
    shape is checked here, before any client is built: a malformed key was a 500."""
    return _checked(bearer.credentials if bearer else None)


async def stream_api_key(
    bearer: Bearer, access_token: Annotated[str | None, Security(ACCESS_TOKEN)]
) -> str:
    """EventSource cannot set headers, so the stream also takes `?access_token=`."""
    return _checked((bearer.credentials if bearer else None) or access_token)


KEPT_KEYS = 1024


@dataclass(frozen=True)
class Services:
    runs: RunsClient
    engine: EngineClient


class ServicesByKey:
    """The clients of the last keys seen, kept: a client builds a stub per RPC method, and a
    thousand browsers connecting with one key would each build their own."""

    def __init__(self, runs: grpc.aio.Channel, engine: grpc.aio.Channel, timeout_s: float):
        self._runs, self._engine, self._timeout_s = runs, engine, timeout_s
        self._kept: OrderedDict[str, Services] = OrderedDict()

    def __call__(self, key: str) -> Services:
        kept = self._kept.get(key)
        if kept is None:
            md = bearer_metadata(key)
            kept = Services(
                RunsClient(self._runs, md, self._timeout_s), EngineClient(self._engine, md)
            )
            self._kept[key] = kept
            if len(self._kept) > KEPT_KEYS:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(key)
        return kept


def _services(request: Request, key: str) -> Services:
    by_key: ServicesByKey = request.app.state.services
    return by_key(key)


async def services(request: Request, key: Annotated[str, Depends(api_key)]) -> Services:
    return _services(request, key)


async def stream_services(
    request: Request, key: Annotated[str, Depends(stream_api_key)]
) -> Services:
    return _services(request, key)


Clients = Annotated[Services, Depends(services)]
StreamClients = Annotated[Services, Depends(stream_services)]
