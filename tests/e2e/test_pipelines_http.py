"""A pipeline over HTTP: leaving the page and coming back mid-run never restarts it; the patch
downloads as a diff; findings list as JSON."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.processes import ProcessStack
from tests.support.repos import model_replies, planted_repo
from tests.support.sse_client import read_events


async def test_reconnecting_mid_pipeline_never_restarts_it(
    http: httpx.AsyncClient, stack: ProcessStack, tmp_path: Path
) -> None:
    repo = planted_repo(tmp_path)
    headers = stack.headers
    project = (await http.post("/v1/projects", json={"name": "pipes"}, headers=headers)).json()
    repository = await http.post(
        f"/v1/projects/{project['id']}/repositories",
        json={"owner": "acme", "repo": "shop", "path": str(repo)},
        headers=headers,
    )
    assert repository.status_code == 201, repository.text
    # Slow enough that the page can leave and come back while it runs.
    params = {"replies": model_replies(), "tokens": 20, "token_delay_ms": 40}
    started = await http.post(
        f"/v1/repositories/{repository.json()['id']}/pipelines",
        json={"pipeline": "auto-fix", "params": params},
        headers=headers,
    )
    assert started.status_code == 201, started.text
    run = started.json()
    assert run["status"] == "pending" and run["phase"] == "scanning"
    url = f"/v1/runs/{run['id']}/events"

    # The page opens the stream, sees the pipeline move, and goes away.
    seen: list[str] = []
    async with http.stream("GET", url, headers=headers) as first:
        async for line in first.aiter_lines():
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
            if seen.count("step_started") == 2:
                break
    middle = (await http.get(f"/v1/runs/{run['id']}", headers=headers)).json()
    assert middle["status"] == "running" and middle["phase"] == "improving"

    # Back on the page: the same run, continued, never restarted.
    events = await read_events(http, url, headers)
    types = [e.event for e in events]
    assert types.count("run_started") == 1 and types[-1] == "run_completed"
    assert [int(e.id or 0) for e in events] == list(range(1, len(events) + 1))
    runs = (await http.get(f"/v1/runs?workflow_id={run['workflow_id']}", headers=headers)).json()
    assert len(runs["runs"]) == 1

    patch = await http.get(f"/v1/runs/{run['id']}/artifacts/patch", headers=headers)
    assert patch.status_code == 200 and patch.headers["content-type"].startswith("text/x-diff")
    assert "+    return a + b" in patch.text
    assert (await http.get(f"/v1/runs/{run['id']}/findings", headers=headers)).json() == {
        "findings": []
    }
    missing = await http.get(f"/v1/runs/{run['id']}/artifacts/nope", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "name"
    bad = await http.post(
        f"/v1/repositories/{repository.json()['id']}/pipelines",
        json={"pipeline": "refactor"},
        headers=headers,
    )
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "goal"
