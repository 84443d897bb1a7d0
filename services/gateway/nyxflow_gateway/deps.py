"""Request dependencies: the caller's API key and per-request clients carrying it.

All `async def`: FastAPI runs a plain `def` dependency in a worker thread, a thread hop on
every request for what is a dictionary lookup."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import grpc
from fastapi import Depends, Query, Request

from nyxflow.auth import bearer_metadata, checked_key
from nyxflow.client import EngineClient, RunsClient
from nyxflow.errors import Unauthenticated


def _bearer(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


async def api_key(request: Request) -> str:
    """The key from `Authorization: Bearer`. Runs checks the key, not the gateway; only its
    shape is checked here, before any client is built: a malformed key was a 500."""
    key = _bearer(request)
    if key is None:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    return checked_key(key)


async def stream_api_key(
    request: Request,
    access_token: Annotated[str | None, Query(description="for EventSource")] = None,
) -> str:
    """EventSource cannot set headers, so the stream also takes `?access_token=`."""
    key = _bearer(request) or access_token
    if not key:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    return checked_key(key)


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
