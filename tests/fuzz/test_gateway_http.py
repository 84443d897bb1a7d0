"""Schemathesis against the gateway's own OpenAPI document, on a real process stack (SQLite):
no 500 for anything it generates, and every 400 names its field. The SSE route streams, so it
is left out here and fed bad Last-Event-ID values by hand below."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from nyxflow_gateway.app import create_app
from tests.fuzz.conftest import CALL_TIMEOUT_S
from tests.support.inprocess import API_KEY
from tests.support.processes import ProcessStack

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
EVENTS = r"/events$"


# The document the app serves at /openapi.json (checked against the live one below); loaded at
# import so each operation is its own test item.
DOCUMENT = create_app().openapi()
CONFIG = schemathesis.Config.from_dict(
    {
        "headers": HEADERS,
        "request-timeout": CALL_TIMEOUT_S,
        "generation": {"mode": "all", "max-examples": 25},
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(path_regex=EVENTS)


def names_the_field(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """A 400 is {"error": {"code", "message", "field"}} with the field named."""
    if response.status_code != 400:
        return None
    body = json.loads(response.content)
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"400 without an error object: {response.content[:300]!r}"
    assert error.get("field"), f"400 naming no field: {error}"
    return None


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_gateway_never_500(case: schemathesis.Case[Any], sqlite_stack: ProcessStack) -> None:
    case.call_and_validate(
        base_url=sqlite_stack.base_url,
        headers=HEADERS,
        checks=[not_a_server_error, names_the_field],
        timeout=CALL_TIMEOUT_S,
    )


def test_the_live_document_is_the_one_fuzzed(sqlite_stack: ProcessStack) -> None:
    live = httpx.get(f"{sqlite_stack.base_url}/openapi.json", timeout=CALL_TIMEOUT_S)
    assert live.status_code == 200
    assert live.json() == DOCUMENT


# --- the SSE route, by hand -------------------------------------------------------------------


@pytest.fixture
async def http(sqlite_stack: ProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=sqlite_stack.base_url, headers=HEADERS, timeout=CALL_TIMEOUT_S
    ) as client:
        yield client


async def finished_run(http: httpx.AsyncClient) -> dict[str, Any]:
    """A run that ended (cancelled), so its stream closes after the replay."""
    step = {"name": "a", "kind": "llm", "prompt": "hi", "provider": "local"}
    created = await http.post("/v1/workflows", json={"name": "sse", "steps": [step]})
    assert created.status_code == 201, created.text
    run = await http.post(f"/v1/workflows/{created.json()['id']}/runs")
    assert run.status_code == 201, run.text
    cancelled = await http.post(f"/v1/runs/{run.json()['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    body: dict[str, Any] = cancelled.json()
    return body


# Header values httpx can send (ASCII, nothing around them), and query values (anything).
BAD_HEADERS = ["-1", "abc", "1.5", "1e3", "0x10", "9" * 19, "1 2", "+1", "1_000", "\x7f"]
BAD_QUERIES = [*BAD_HEADERS, "٣", " ", "\x00", "\uff11", "7\n8"]
GOOD_IDS = ["0", "1", "999999999999999999", "000000000000000001"]


async def events(http: httpx.AsyncClient, run_id: str, **kwargs: Any) -> httpx.Response:
    return await http.get(f"/v1/runs/{run_id}/events", **kwargs)


@pytest.mark.parametrize("value", BAD_HEADERS)
async def test_bad_last_event_id_header(http: httpx.AsyncClient, value: str) -> None:
    run = await finished_run(http)
    response = await events(http, run["id"], headers={"Last-Event-ID": value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "Last-Event-ID"


@pytest.mark.parametrize("value", BAD_QUERIES)
async def test_bad_last_event_id_query(http: httpx.AsyncClient, value: str) -> None:
    run = await finished_run(http)
    response = await events(http, run["id"], params={"last_event_id": value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "last_event_id"


@pytest.mark.parametrize("value", GOOD_IDS)
async def test_odd_but_valid_last_event_id_replays_and_closes(
    http: httpx.AsyncClient, value: str
) -> None:
    run = await finished_run(http)
    response = await events(http, run["id"], headers={"Last-Event-ID": value})
    if int(value) >= run["last_seq"]:  # nothing after it, and nothing will come
        assert response.status_code == 204, response.text
        return
    assert response.status_code == 200, response.text
    seqs = [int(line[4:]) for line in response.text.splitlines() if line.startswith("id: ")]
    assert all(seq > int(value) for seq in seqs)
    if value == "0":
        assert seqs, "a replay from the start holds the run's events"


@pytest.mark.parametrize(
    "run_id", ["nope", str(uuid.uuid4()), "%00", "a" * 5000, "%F0%9F%98%80", "..%2F..%2Fetc"]
)
async def test_events_of_unknown_runs(http: httpx.AsyncClient, run_id: str) -> None:
    response = await events(http, run_id, headers={"Last-Event-ID": "3"})
    assert response.status_code in (400, 404), response.text
    if response.status_code == 400:
        assert response.json()["error"]["field"]


async def test_events_without_a_key(http: httpx.AsyncClient) -> None:
    run = await finished_run(http)
    response = await events(http, run["id"], headers={"Authorization": "", "Last-Event-ID": "x"})
    assert response.status_code in (400, 401), response.text


# --- the field a 400 names is the one the client sent, not the gRPC message's -----------------


async def llm_step_id(http: httpx.AsyncClient) -> str:
    step = {"name": "a", "kind": "llm", "prompt": "hi", "provider": "local"}
    created = await http.post("/v1/workflows", json={"name": "fields", "steps": [step]})
    assert created.status_code == 201, created.text
    step_id: str = created.json()["steps"][0]["id"]
    return step_id


@pytest.mark.parametrize(
    ("providers", "field"),
    [
        (["local", "bogus"], "providers[1]"),  # unknown
        (["local:\x00"], "providers[0]"),  # NUL
        (["local:" + "m" * 200], "providers[0]"),  # too long
        (["local"] * 9, "providers"),  # a longer chain than a step may have
    ],
)
async def test_retry_names_the_providers_sent(
    http: httpx.AsyncClient, providers: list[str], field: str
) -> None:
    """RetryStep carries the chain in a message (set, or not): its `names` are the body's
    `providers`."""
    step_id = await llm_step_id(http)
    response = await http.post(f"/v1/steps/{step_id}/retry", json={"providers": providers})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("p", {"system_prompt": "   "}, "system_prompt"),  # blank
        ("p", {"system_prompt": "x\x00"}, "system_prompt"),  # NUL
        ("p", {"role": "\x00", "system_prompt": "x"}, "role"),  # NUL
        ("%20", {"system_prompt": "x"}, "name"),  # blank
        ("a%09b", {"system_prompt": "x"}, "name"),  # not one line
        ("n" * 101, {"system_prompt": "x"}, "name"),  # too long
        ("a%00b", {"system_prompt": "x"}, "name"),  # NUL
    ],
)
async def test_put_persona_names_the_field_sent(
    http: httpx.AsyncClient, name: str, body: dict[str, str], field: str
) -> None:
    """PutPersona wraps the path's name and the body in one message, `persona`: its fields are
    the path's and the body's own."""
    response = await http.put(f"/v1/personas/{name}", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
