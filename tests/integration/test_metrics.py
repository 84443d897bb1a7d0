"""The metrics move with the work: runs, steps by kind and provider, events, fallbacks, and
the engine's metrics port serves them in Prometheus' text format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY

from nyxflow.v1 import common_pb2 as pb
from tests.support.inprocess import Clients, clients, engine_service
from tests.support.ports import free_port


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def metrics_port() -> int:
    return free_port()


@pytest.fixture
async def api(runs_addr: str, metrics_port: int) -> AsyncIterator[Clients]:
    async with (
        engine_service(runs_addr, metrics_port=metrics_port) as engine,
        clients(runs_addr, engine.engine_listen) as c,
    ):
        yield c


async def test_a_run_moves_the_counters_and_the_port_serves_them(
    api: Clients, metrics_port: int
) -> None:
    before = {
        "created": value("nyxflow_runs_created_total"),
        "completed": value("nyxflow_runs_finished_total", status="completed"),
        "steps": value("nyxflow_step_duration_seconds_count", kind="llm", provider="local"),
        "events": value("nyxflow_events_written_total"),
        "errors": value("nyxflow_provider_errors_total", provider="openai", action="next"),
        "fallbacks": value(
            "nyxflow_provider_fallbacks_total", from_provider="openai", to_provider="local"
        ),
    }
    steps = [
        # openai has no key here: the chain moves on to local at once, and says so.
        pb.StepSpec(name="a", kind="llm", prompt="p", providers=["openai:gpt-4.1", "local"]),
        pb.StepSpec(name="b", kind="llm", prompt="p", params_json=json.dumps({"tokens": 3})),
    ]
    workflow = await api.runs.create_workflow("metrics", steps)
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    events = [e async for e in api.engine.execute(run.id)]

    assert value("nyxflow_runs_created_total") == before["created"] + 1
    assert value("nyxflow_runs_finished_total", status="completed") == before["completed"] + 1
    steps_after = value("nyxflow_step_duration_seconds_count", kind="llm", provider="local")
    assert steps_after == before["steps"] + 2
    assert value("nyxflow_events_written_total") >= before["events"] + len(events)
    errors = value("nyxflow_provider_errors_total", provider="openai", action="next")
    assert errors == before["errors"] + 1
    fallbacks = value(
        "nyxflow_provider_fallbacks_total", from_provider="openai", to_provider="local"
    )
    assert fallbacks == before["fallbacks"] + 1

    async with httpx.AsyncClient() as http:
        scraped = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert scraped.status_code == 200
    assert 'nyxflow_step_duration_seconds_bucket{kind="llm",le="0.01",provider="local"}' in (
        scraped.text
    )
