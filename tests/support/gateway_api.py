"""The gateway's JSON API, as a browser or script would call it."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.processes import ProcessStack


async def create_workflow(
    http: httpx.AsyncClient,
    stack: ProcessStack,
    name: str,
    steps: list[dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    response = await http.post(
        "/v1/workflows", json={"name": name, "steps": steps, **fields}, headers=stack.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def start_run(http: httpx.AsyncClient, stack: ProcessStack, workflow_id: str) -> str:
    response = await http.post(f"/v1/workflows/{workflow_id}/runs", headers=stack.headers)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    return str(response.json()["id"])


async def get_run(http: httpx.AsyncClient, stack: ProcessStack, run_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/runs/{run_id}", headers=stack.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def steps(count: int, **params: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": f"s{i}",
            "kind": "llm",
            "prompt": f"step {i}",
            "provider": "local",
            "params": params,
        }
        for i in range(count)
    ]
