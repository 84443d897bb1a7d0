"""A refusal as too large (RESOURCE_EXHAUSTED, 413) names the request's body only when the
request had one: a read whose answer passed the message limit sent none, and said "body"."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from nyxflow.errors import ResourceExhausted
from nyxflow_gateway import errors


def app() -> FastAPI:
    """Routes refused as gRPC refuses a message over its limit, with no field named."""
    made = FastAPI()
    errors.install(made)

    async def refused() -> None:
        raise ResourceExhausted("Received message larger than max (39992090 vs. 33554432)")

    made.get("/read")(refused)
    made.post("/write")(refused)
    return made


async def refusal(method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, json={} if method == "POST" else None)


async def test_a_read_refused_as_too_large_names_no_request_body() -> None:
    got = await refusal("GET", "/read")
    assert got.status_code == 413
    assert got.json()["error"]["field"] is None
    assert "larger than max" in got.json()["error"]["message"]


async def test_a_write_refused_as_too_large_names_its_body() -> None:
    got = await refusal("POST", "/write")
    assert got.status_code == 413
    assert got.json()["error"]["field"] == "body"
