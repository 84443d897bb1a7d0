"""Over HTTP, every route with another tenant's ids answers 404, and bad keys 401. The routes
are read off the app itself, so a new route without its check fails here."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, open_channel
from nyxflow_gateway.app import create_app
from tests.support.gateway_api import create_workflow, start_run, steps
from tests.support.inprocess import ADMIN_KEY
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events

# Routes that take no tenant's id, each with the reason.
NO_ID = {
    ("GET", "/"): "the page",
    ("GET", "/healthz"): "health",
    ("GET", "/v1/debug/streams"): "a count, no ids",
    ("PUT", "/v1/personas/{name}"): "writes the caller's own persona by name",
}
PARAM = re.compile(r"\{(\w+)\}")
# A value for every body field a route with an id takes: each route gets the ones it declares
# (a field it does not declare is refused, before the id is looked up).
BODY = {
    "name": "x", "text": "x", "owner": "o", "repo": "r", "index": 0, "pipeline": "code-analysis",
}  # fmt: skip


def valid_body(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    refs = [
        s.get("$ref", "")
        for s in [schema.get("schema", {}), *schema.get("schema", {}).get("anyOf", [])]
    ]
    models = document["components"]["schemas"]
    fields = {f for ref in refs if ref for f in models[ref.rsplit("/", 1)[1]]["properties"]}
    return {k: v for k, v in BODY.items() if k in fields}


@dataclass
class World:
    ids: dict[str, str]
    b: dict[str, str]  # tenant B's headers
    admin: AdminClient
    b_slug: str


@pytest.fixture
async def world(stack: ProcessStack, http: httpx.AsyncClient) -> AsyncIterator[World]:
    a = stack.headers
    project = await http.post("/v1/projects", json={"name": f"p-{uuid.uuid4()}"}, headers=a)
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    repository = await http.post(
        f"/v1/projects/{project_id}/repositories",
        json={"owner": "walls", "repo": f"r-{uuid.uuid4().hex[:8]}"},
        headers=a,
    )
    assert repository.status_code == 201, repository.text
    workflow = await create_workflow(http, stack, "walls", steps(2, tokens=3))
    run_id = await start_run(http, stack, workflow["id"])
    async with open_channel(stack.runs_addr) as channel:
        admin = AdminClient(channel, bearer_metadata(ADMIN_KEY))
        slug = f"b-{uuid.uuid4().hex[:8]}"
        await admin.create_tenant(slug)
        key = (await admin.create_api_key(slug, "walls")).secret
        ids = {
            "workflow_id": workflow["id"],
            "run_id": run_id,
            "step_id": workflow["steps"][0]["id"],
            "project_id": project_id,
            "repository_id": repository.json()["id"],
            "name": "patch",
        }
        yield World(ids, {"Authorization": f"Bearer {key}"}, admin, slug)


async def test_every_route_hides_another_tenants_data(
    http: httpx.AsyncClient, stack: ProcessStack, world: World
) -> None:
    events = await read_events(http, f"/v1/runs/{world.ids['run_id']}/events", stack.headers)
    assert events[-1].event == "run_completed"
    checked = []
    secret_ids = [v for k, v in world.ids.items() if k.endswith("_id")]
    # Every route the app documents: a new one without its tenant check fails here.
    document = create_app().openapi()
    for route, operations in document["paths"].items():
        for method in sorted(m.upper() for m in operations):
            params = PARAM.findall(route)
            if (method, route) in NO_ID:
                continue
            if not params:
                response = await http.request(method, route, headers=world.b, json={})
                assert not any(v in response.text for v in secret_ids), route
                continue
            unknown = set(params) - set(world.ids)
            assert not unknown, f"{method} {route}: add {unknown} to this test"
            path = PARAM.sub(lambda m: world.ids[m.group(1)], route)
            body = valid_body(document, operations[method.lower()])
            response = await http.request(method, path, headers=world.b, json=body)
            assert response.status_code == 404, f"{method} {route}: {response.text}"
            assert not any(v in response.text for v in secret_ids if v not in path)
            checked.append(f"{method} {route}")
    assert len(checked) >= 17, checked  # a dropped route shows up here
    # The event stream, with the key as EventSource sends it.
    run_id, key = world.ids["run_id"], world.b["Authorization"].removeprefix("Bearer ")
    stream = await http.get(f"/v1/runs/{run_id}/events", params={"access_token": key})
    assert stream.status_code == 404


async def test_missing_malformed_revoked_and_expired_keys_are_401(
    http: httpx.AsyncClient, world: World
) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer nyx_nope"}):
        response = await http.get("/v1/workflows", headers=headers)
        assert response.status_code == 401, headers
        assert "error" in response.json()
    assert (await http.get("/v1/workflows", headers=world.b)).status_code == 200

    key = await world.admin.create_api_key(world.b_slug, "revoke-me")
    revocable = {"Authorization": f"Bearer {key.secret}"}
    assert (await http.get("/v1/workflows", headers=revocable)).status_code == 200
    await world.admin.revoke_api_key(key.key.id)
    assert (await http.get("/v1/workflows", headers=revocable)).status_code == 401

    brief = await world.admin.create_api_key(world.b_slug, "brief", expires_at=time.time() + 0.5)
    expired = {"Authorization": f"Bearer {brief.secret}"}
    await asyncio.sleep(0.6)
    assert (await http.get("/v1/workflows", headers=expired)).status_code == 401
