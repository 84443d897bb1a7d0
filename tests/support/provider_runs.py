"""Workflows run by an engine whose providers all point at the fake provider server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from tests.support.inprocess import Clients, clients, engine_service

KEYS: dict[str, Any] = {  # engine settings
    "anthropic_api_key": "sk-ant-secret-4242",
    "openai_api_key": "sk-openai-secret-4242",
    "google_api_key": "AIza-secret-4242",
    "openai_compatible_api_key": "local-secret-4242",
}


@contextlib.asynccontextmanager
async def engine_on_fake(runs_addr: str, base_url: str, **settings: Any) -> AsyncIterator[Clients]:
    """Runs plus an engine whose providers all point at `base_url`, retrying fast; `settings`
    are the engine's own beside these."""
    async with (
        engine_service(
            runs_addr,
            **KEYS,
            anthropic_base_url=base_url,
            openai_base_url=f"{base_url}/v1",
            openai_compatible_base_url=f"{base_url}/v1",
            google_base_url=base_url,
            provider_backoff_s=0.01,
            provider_backoff_max_s=0.05,
            delta_flush_ms=0,
            **settings,
        ) as engine,
        clients(runs_addr, engine.engine_listen) as c,
    ):
        yield c


def step(name: str, providers: list[str], **fields: Any) -> pb.StepSpec:
    return pb.StepSpec(name=name, kind="llm", prompt="Write it.", providers=providers, **fields)


async def run_steps(api: Clients, *steps: pb.StepSpec) -> tuple[pb.Run, list[pb.RunEvent]]:
    workflow = await api.runs.create_workflow("providers", list(steps))
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    events = [e async for e in api.engine.execute(run.id)]
    return await api.runs.get_run(run.id), events


def of_type(events: list[pb.RunEvent], type_: str) -> list[dict[str, Any]]:
    return [json.loads(e.data_json) for e in events if e.type == type_]


def streamed_text(events: list[pb.RunEvent]) -> str:
    """What a browser shows: deltas appended, a reset discarding what came before it."""
    shown = ""
    for delta in of_type(events, ev.STEP_DELTA):
        shown = "" if delta.get("reset") else shown + delta["text"]
    return shown
