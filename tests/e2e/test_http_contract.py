"""The HTTP contract past the routes themselves: a body field the gateway does not know is
refused naming it (never dropped), a 405 says which methods the path takes, and HEAD is
answered wherever GET is."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway_api import create_workflow, get_run, start_run, steps
from tests.support.processes import ProcessStack
from tests.support.repos import planted_repo
from tests.support.sse_client import read_events

NO_ID = "00000000-0000-0000-0000-000000000000"  # the body is refused before any id is looked up


async def run_count(http: httpx.AsyncClient, stack: ProcessStack) -> int:
    response = await http.get("/v1/runs", params={"limit": 500}, headers=stack.headers)
    assert response.status_code == 200, response.text
    return len(response.json()["runs"])


def refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert response.json()["error"]["field"] == field, response.text[:300]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/v1/personas/Critic", {"system_promt": "be brief"}, "system_promt"),
        ("POST", "/v1/projects", {"name": "p", "nmae": "q"}, "nmae"),
        (
            "POST",
            f"/v1/projects/{NO_ID}/repositories",
            {"owner": "o", "repo": "r", "paht": "/"},
            "paht",
        ),
        ("POST", f"/v1/projects/{NO_ID}/notes", {"text": "t", "pinned": True}, "pinned"),
        ("POST", f"/v1/workflows/{NO_ID}/duplicate", {"nam": "copy"}, "nam"),
        ("POST", f"/v1/workflows/{NO_ID}/insights", {"text": "t", "txt": "t"}, "txt"),
        ("POST", f"/v1/steps/{NO_ID}/select", {"index": 0, "indx": 1}, "indx"),
        # Routes that take no body read none: a script's field went unseen.
        ("POST", f"/v1/workflows/{NO_ID}/rerun", {"from_step": "s1"}, "from_step"),
        ("POST", f"/v1/workflows/{NO_ID}/resume", {"from_step": "s1"}, "from_step"),
        ("POST", f"/v1/workflows/{NO_ID}/runs", {"steps": ["s1"]}, "steps"),
        ("POST", f"/v1/runs/{NO_ID}/cancel", {"reason": "wrong input"}, "reason"),
        ("POST", f"/v1/runs/{NO_ID}/pause", {"at_step": "s1"}, "at_step"),
        ("POST", f"/v1/steps/{NO_ID}/retry", {"cascade": True, "max_token": 9}, "max_token"),
        (
            "POST",
            f"/v1/repositories/{NO_ID}/pipelines",
            {"pipeline": "refactor", "gaol": "x"},
            "gaol",
        ),
        # Templates refused this way already; every other body now does the same.
        (
            "POST",
            "/v1/workflows",
            {"name": "t", "steps": [{"name": "a", "max_token": 5}]},
            "steps[0].max_token",
        ),
    ],
)
async def test_every_body_refuses_a_field_it_does_not_know(
    http: httpx.AsyncClient,
    stack: ProcessStack,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    refused(await http.request(method, path, json=body, headers=stack.headers), field)


async def test_a_route_that_takes_no_body_still_takes_none_or_an_empty_one(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "bodiless", steps(1, tokens=3))
    first = await http.post(f"/v1/workflows/{workflow['id']}/runs", json={}, headers=stack.headers)
    assert first.status_code == 201, first.text
    cancelled = await http.post(f"/v1/runs/{first.json()['id']}/cancel", headers=stack.headers)
    assert cancelled.status_code == 200, cancelled.text
    rerun = await http.post(f"/v1/workflows/{workflow['id']}/rerun", json={}, headers=stack.headers)
    assert rerun.status_code == 201, rerun.text


async def test_a_retry_with_a_misspelt_limit_starts_nothing(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    workflow = await create_workflow(http, stack, "typo", steps(1, tokens=3))
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    step_id = workflow["steps"][0]["id"]
    before = await run_count(http, stack)
    # Dropped, the field left the step at its old limit while the user asked for 16384.
    retried = await http.post(
        f"/v1/steps/{step_id}/retry", json={"max_token": 16384}, headers=stack.headers
    )
    refused(retried, "max_token")
    assert await run_count(http, stack) == before
    spelt = await http.post(
        f"/v1/steps/{step_id}/retry", json={"max_tokens": 16384}, headers=stack.headers
    )
    assert spelt.status_code == 201, spelt.text


async def test_an_auto_fix_with_a_misspelt_test_command_starts_nothing(
    http: httpx.AsyncClient, stack: ProcessStack, tmp_path: Path
) -> None:
    headers = stack.headers
    project = await http.post("/v1/projects", json={"name": f"p-{uuid.uuid4()}"}, headers=headers)
    repository = await http.post(
        f"/v1/projects/{project.json()['id']}/repositories",
        json={
            "owner": "o",
            "repo": f"r-{uuid.uuid4().hex[:6]}",
            "path": str(planted_repo(tmp_path)),
        },
        headers=headers,
    )
    assert repository.status_code == 201, repository.text
    before = await run_count(http, stack)
    # Dropped, the auto-fix reviewed its patches with no test command at all.
    started = await http.post(
        f"/v1/repositories/{repository.json()['id']}/pipelines",
        json={"pipeline": "auto-fix", "test_comand": "python -m pytest -q"},
        headers=headers,
    )
    refused(started, "test_comand")
    assert await run_count(http, stack) == before


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        # Starlette named the first route at the path only: GET, though POST creates.
        ("DELETE", "/v1/workflows", {"GET", "HEAD", "POST"}),
        ("PUT", "/v1/workflows/import", {"POST", "GET", "HEAD", "DELETE"}),
        ("PUT", f"/v1/runs/{NO_ID}", {"GET", "HEAD"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("POST", "/static/app.js", {"GET", "HEAD"}),
    ],
)
async def test_a_405_names_every_method_the_path_takes(
    http: httpx.AsyncClient, stack: ProcessStack, method: str, path: str, allowed: set[str]
) -> None:
    response = await http.request(method, path, headers=stack.headers)
    assert response.status_code == 405, response.text
    assert response.json()["error"]["code"] == "http_error"
    assert "allow" in response.headers, f"405 without Allow: {dict(response.headers)}"
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


async def test_head_is_answered_where_get_is(http: httpx.AsyncClient, stack: ProcessStack) -> None:
    headers = stack.headers
    workflow = await create_workflow(http, stack, "heads", steps(1, tokens=3))
    for path in ("/healthz", "/", "/v1/workflows", f"/v1/workflows/{workflow['id']}"):
        got = await http.get(path, headers=headers)
        head = await http.head(path, headers=headers)
        assert (head.status_code, got.status_code) == (200, 200), (path, dict(head.headers))
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == got.headers["content-length"]
    missing = await http.head(f"/v1/workflows/{NO_ID}", headers=headers)
    assert missing.status_code == 404 and missing.content == b""
    assert (await http.head("/v1/workflows")).status_code == 401


async def test_head_on_the_event_stream_starts_nothing(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """The stream's GET starts a pending run; a HEAD must change nothing, so it is refused."""
    workflow = await create_workflow(http, stack, "no-head", steps(1, tokens=3))
    run_id = await start_run(http, stack, workflow["id"])
    head = await http.head(f"/v1/runs/{run_id}/events", headers=stack.headers)
    assert head.status_code == 405 and head.headers["allow"] == "GET"
    assert (await get_run(http, stack, run_id))["status"] == "pending"
