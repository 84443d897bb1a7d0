"""A workflow with a review step per repository over HTTP: GET …/artifacts/patch is the last
review's, says whose in `X-Nyxflow-Step-Id`, and `?step_id=` gives another review's; a step
without one is a 404 naming `step_id`, never another step's patch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_artifacts_per_step import UTIL_DIFF
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.processes import ProcessStack
from tests.support.repos import GOOD_DIFF, planted_repo
from tests.support.sse_client import read_events


def scan_and_review(label: str, repo: Path, diff: str) -> list[dict[str, Any]]:
    return [
        {
            "name": f"Scan {label}",
            "kind": "tool",
            "tool": "scan_repository",
            "params": {"path": str(repo)},
        },
        {
            "name": f"Review {label}",
            "kind": "tool",
            "tool": "review_patches",
            "params": {"path": str(repo), "scanned": True},
            "prompt": f"{{{{ steps.Scan {label}.output }}}}\n\n{diff}",
        },
    ]


async def test_each_review_s_patch_downloads_by_its_step(
    http: httpx.AsyncClient, stack: ProcessStack, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    steps = [
        *scan_and_review("A", planted_repo(tmp_path / "a"), GOOD_DIFF),
        *scan_and_review("B", planted_repo(tmp_path / "b"), UTIL_DIFF),
    ]
    workflow = await create_workflow(http, stack, "two repositories", steps)
    run_id = await start_run(http, stack, workflow["id"])
    events = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    assert events[-1].event == "run_completed", events[-1].data
    scan_a, review_a, _, review_b = (s["id"] for s in (await get_run(http, stack, run_id))["steps"])
    url = f"/v1/runs/{run_id}/artifacts/patch"

    latest = await http.get(url, headers=stack.headers)
    assert latest.status_code == 200, latest.text
    assert latest.headers["x-nyxflow-step-id"] == review_b and "util.py" in latest.text
    first = await http.get(url, params={"step_id": review_a}, headers=stack.headers)
    assert first.status_code == 200, first.text
    assert first.headers["x-nyxflow-step-id"] == review_a
    assert "calc.py" in first.text and "util.py" not in first.text

    none = await http.get(url, params={"step_id": scan_a}, headers=stack.headers)
    assert none.status_code == 404 and none.json()["error"]["field"] == "step_id"
    assert review_a in none.json()["error"]["message"]
    wide = await http.get(url, params={"step_id": "x" * 37}, headers=stack.headers)
    assert wide.status_code == 400 and wide.json()["error"]["field"] == "step_id"
