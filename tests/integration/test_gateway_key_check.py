"""The gateway asks runs about a request's key before it reads the request's body: a key of the
right shape but made up (or revoked) gets its 401 with none of its body read or parsed, and a
template that is parsed is parsed off the event loop. The gateway under uvicorn in front of
the real runs service (PostgreSQL)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, open_channel
from nyxflow.errors import Unauthenticated
from nyxflow.templates import WorkflowTemplate, parse_template
from nyxflow_gateway import key_check
from nyxflow_gateway.deps import ServicesByKey
from nyxflow_gateway.key_check import TRUSTED_S, KeyCheck
from nyxflow_gateway.routes import workflows
from nyxflow_gateway.settings import GatewaySettings
from tests.fuzz.test_limits import post_head, raw_answer
from tests.support.databases import fresh_database
from tests.support.inprocess import ADMIN_KEY, API_KEY, Clients
from tests.support.ports import free_port
from tests.support.processes import ProcessStack
from tests.unit.test_gateway_app import serve_gateway

MADE_UP = {"Authorization": "Bearer made-up-key"}
# 1 MB of YAML whose parse took PyYAML 14-21 s, on the event loop.
BIG_YAML = ("name: x\nsteps: [" + "1," * 499_000 + "1]\n").encode()
SMALL_YAML = "name: imported\nsteps:\n  - name: a\n    provider: local\n    prompt: hi\n"


@pytest.fixture
async def database_url(tmp_path: Path) -> AsyncIterator[str]:
    """PostgreSQL only: the gateway's part is the same on both backends."""
    async with fresh_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
async def base_url(runs_addr: str) -> AsyncIterator[str]:
    settings = GatewaySettings(
        runs_addr=runs_addr, engine_addr=f"127.0.0.1:{free_port()}", rpc_timeout_s=5.0
    )
    async with serve_gateway(settings) as url:
        yield url


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The thread of each template parse the import route makes."""
    threads: list[threading.Thread] = []

    def recorded(text: str) -> WorkflowTemplate:
        threads.append(threading.current_thread())
        return parse_template(text)

    monkeypatch.setattr(workflows, "parse_template", recorded)
    return threads


async def answer_to_half_a_body(base_url: str, path: str, key: str) -> tuple[int, Any]:
    """POST declaring 1,000 bytes and sending 10: only an answer given without reading the
    body comes; one that waits for the rest times out (the test fails)."""
    port = urlsplit(base_url).port
    assert port is not None
    at = ProcessStack(database_url="", logs=Path(), gateway_port=port)  # only its port is read
    head = post_head(path, "Content-Length: 1000", f"Authorization: Bearer {key}")
    return await raw_answer(at, head, b"name: x\nst")


async def new_key(admin: AdminClient) -> tuple[str, str]:
    """A new tenant's key: (id, secret)."""
    slug = f"t-{uuid.uuid4().hex[:8]}"
    await admin.create_tenant(slug)
    made = await admin.create_api_key(slug, "ci")
    return made.key.id, made.secret


async def test_a_made_up_key_gets_its_401_before_its_body_is_read(
    base_url: str, parses: list[threading.Thread]
) -> None:
    status, answer = await answer_to_half_a_body(base_url, "/v1/workflows/import", "made-up")
    assert status == 401, answer
    assert answer["error"]["code"] == "unauthenticated"
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        big = await http.post("/v1/workflows/import", content=BIG_YAML, headers=MADE_UP)
        assert big.status_code == 401, big.text[:300]
        empty_list = b'{"name": "x", "steps": [' + b"[]," * 100_000 + b"[]]}"
        json_body = await http.post(
            "/v1/workflows",
            content=empty_list,
            headers={**MADE_UP, "Content-Type": "application/json"},
        )
        assert json_body.status_code == 401, json_body.text[:300]
    assert parses == []


async def test_a_template_is_parsed_off_the_event_loop(
    base_url: str, parses: list[threading.Thread]
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/yaml"}
        made = await http.post("/v1/workflows/import", content=SMALL_YAML, headers=headers)
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "imported"
        assert [s["name"] for s in made.json()["steps"]] == ["a"]
        refused = await http.post("/v1/workflows/import", content="name: [", headers=headers)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["field"] == "template"
    assert len(parses) == 2
    assert all(thread is not threading.main_thread() for thread in parses), parses


async def test_a_revoked_key_has_no_body_read_once_its_trust_runs_out(
    base_url: str, runs: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(key_check, "monotonic", lambda: now[0])
    admin = AdminClient(runs.runs_channel, bearer_metadata(ADMIN_KEY))
    key_id, secret = await new_key(admin)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/yaml"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        made = await http.post("/v1/workflows/import", content=SMALL_YAML, headers=headers)
        assert made.status_code == 201, made.text
        await admin.revoke_api_key(key_id)
        # Still trusted: its body is read, and runs refuses the call itself.
        now[0] += TRUSTED_S / 2
        refused = await http.post("/v1/workflows/import", content=SMALL_YAML, headers=headers)
        assert refused.status_code == 401, refused.text
    now[0] += TRUSTED_S / 2
    status, answer = await answer_to_half_a_body(base_url, "/v1/workflows/import", secret)
    assert status == 401, answer


async def test_runs_away_is_a_503_before_the_body_is_read() -> None:
    settings = GatewaySettings(
        runs_addr=f"127.0.0.1:{free_port()}",
        engine_addr=f"127.0.0.1:{free_port()}",
        rpc_timeout_s=2.0,
    )
    async with serve_gateway(settings) as url:
        status, answer = await answer_to_half_a_body(url, "/v1/workflows/import", "any-key")
    assert status == 503, answer
    assert answer["error"]["code"] == "unavailable"


async def test_only_keys_runs_takes_are_kept_and_only_so_many(
    runs: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_check, "KEPT_KEYS", 2)
    admin = AdminClient(runs.runs_channel, bearer_metadata(ADMIN_KEY))
    keys = [(await new_key(admin))[1] for _ in range(3)]
    asked: list[str] = []
    check = KeyCheck(ServicesByKey(runs.runs_channel, runs.runs_channel, 5.0))
    ask = check._ask

    async def counted(key: str) -> None:
        asked.append(key)
        await ask(key)

    monkeypatch.setattr(check, "_ask", counted)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await check(f"made-up-{uuid.uuid4().hex}")
    for key in keys:
        await check(key)
        await check(key)  # trusted: not asked again
    assert len(asked) == 6
    assert list(check._trusted) == keys[1:]  # the oldest let go; no made-up key kept
    await check(keys[0])  # let go: asked again
    assert len(asked) == 7


async def test_a_burst_of_one_key_asks_runs_once(runs_addr: str) -> None:
    channel = open_channel(runs_addr)
    try:
        services = ServicesByKey(channel, channel, 5.0)
        check = KeyCheck(services)
        calls = 0
        real = services(API_KEY).runs.get_run

        async def counted(run_id: str, *, brief: bool = False) -> Any:
            nonlocal calls
            calls += 1
            return await real(run_id, brief=brief)

        services(API_KEY).runs.get_run = counted  # type: ignore[method-assign]
        await asyncio.gather(*(check(API_KEY) for _ in range(50)))
        assert calls == 1
    finally:
        await channel.close()
