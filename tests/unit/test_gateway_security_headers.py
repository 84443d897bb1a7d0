"""Every answer of the gateway carries the security headers: the page, its files, the API, the
event stream (under both servers) and errors, those refused before any route among them."""

from __future__ import annotations

import re
from typing import Any

import httpx

from nyxflow import events as ev
from nyxflow_gateway.app import PAGE, create_app
from nyxflow_gateway.settings import GatewaySettings
from tests.support.ports import free_port
from tests.unit.test_gateway_app import (  # noqa: F401  (fixtures)
    AUTH,
    BOTH_SERVERS,
    MISSING,
    Gateway,
    events_url,
    gateway,
    overrides,
    protocol,
)

FRAMING = "frame-ancestors 'none'"
SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def assert_secured(answer: httpx.Response) -> None:
    for name, value in SECURITY.items():
        assert answer.headers.get(name) == value, (name, dict(answer.headers))
    policies = answer.headers.get_list("content-security-policy")
    assert len(policies) == 1 and FRAMING in policies[0], dict(answer.headers)


async def test_the_page_keeps_its_own_policy_and_cannot_be_framed(
    gateway: Gateway,  # noqa: F811  (the fixture imported above)
) -> None:
    page = await gateway.http.get("/")
    assert page.status_code == 200
    assert_secured(page)
    meta = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', PAGE.read_text())
    assert meta is not None
    assert page.headers["content-security-policy"] == f"{meta.group(1)}; {FRAMING}"
    head = await gateway.http.head("/")
    assert head.status_code == 200
    assert_secured(head)
    for name in ("app.js", "style.css"):
        assert_secured(await gateway.http.get(f"/static/{name}"))


async def test_api_answers_and_errors_are_secured(
    gateway: Gateway,  # noqa: F811  (the fixture imported above)
) -> None:
    answers: dict[str, Any] = {
        "list": await gateway.http.get("/v1/workflows", headers=AUTH),
        "no key": await gateway.http.get("/v1/workflows"),
        "not found": await gateway.http.get(f"/v1/workflows/{MISSING}", headers=AUTH),
        "bad body": await gateway.http.post("/v1/workflows", json={"steps": []}, headers=AUTH),
        "made-up key, with a body": await gateway.http.post(
            "/v1/workflows", json={"name": "x"}, headers={"Authorization": "Bearer made-up"}
        ),
        "unknown path": await gateway.http.get("/nowhere"),
        "health": await gateway.http.get("/healthz"),
        "document": await gateway.http.get("/openapi.json"),
    }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "list": 200,
        "no key": 401,
        "not found": 404,
        "bad body": 400,
        "made-up key, with a body": 401,
        "unknown path": 404,
        "health": 200,
        "document": 200,
    }
    for answer in answers.values():
        assert_secured(answer)


@BOTH_SERVERS
async def test_the_event_stream_is_secured_and_still_streams(
    gateway: Gateway,  # noqa: F811  (the fixture imported above)
) -> None:
    gateway.world.add_run(ev.RUNNING)
    async with gateway.http.stream("GET", events_url(), headers=AUTH) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert_secured(stream)
        text = (await stream.aread()).decode()
    seqs = [int(n) for n in re.findall(r"^id: (\d+)$", text, re.M)]
    assert seqs == [e.seq for e in gateway.world.history["run-1"]]


async def test_an_unexpected_errors_500_is_secured() -> None:
    """Starlette answers an unhandled error from outside every middleware the app adds: its
    500 went out without the headers."""
    settings = GatewaySettings(
        runs_addr=f"127.0.0.1:{free_port()}", engine_addr=f"127.0.0.1:{free_port()}"
    )
    app = create_app(settings)

    @app.get("/boom")  # stands for any route's unexpected error
    async def boom() -> None:
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http,
    ):
        answer = await http.get("/boom")
    assert answer.status_code == 500
    assert answer.json()["error"]["message"] == "internal error"
    assert_secured(answer)
