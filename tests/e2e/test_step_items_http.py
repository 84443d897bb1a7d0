"""GET /v1/runs/{run_id}/steps/{step_id}/items over the real process stack: a real fan-out's
items page by page, as the page fetches those it lacks; bad input is a 400 naming its field,
wrong ids 404 (another tenant's: test_tenant_walls_http, which walks every route), an older
run's 409 once a newer run holds the step."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nyxflow import events as ev
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events

FAN_OUT = [
    {"name": "Topics", "kind": "llm", "provider": "local", "params": {"items": 12, "tokens": 4}},
    {
        "name": "Each",
        "kind": "fan_out",
        "source": "Topics",
        "split": "headings",
        "prompt": "Detail: {{ item }}",
        "provider": "local",
        "params": {"tokens": 5},
    },
]


async def fanned_out(http: httpx.AsyncClient, stack: ProcessStack) -> dict[str, Any]:
    """A finished run of a fan-out of 12 items."""
    workflow = await create_workflow(http, stack, "items", FAN_OUT)
    run_id = await start_run(http, stack, workflow["id"])
    events = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    assert events[-1].event == ev.RUN_COMPLETED
    return await get_run(http, stack, run_id)


async def items(
    http: httpx.AsyncClient, stack: ProcessStack, run_id: str, step_id: str, **params: Any
) -> httpx.Response:
    url = f"/v1/runs/{run_id}/steps/{step_id}/items"
    return await http.get(url, params=params, headers=stack.headers)


async def test_a_fan_outs_items_page_by_page(http: httpx.AsyncClient, stack: ProcessStack) -> None:
    run = await fanned_out(http, stack)
    step = run["steps"][1]
    assert len(step["items"]) == 12
    assert {i["served_by"] for i in step["items"]} == {step["served_by"]}  # who made each

    whole = await items(http, stack, run["id"], step["id"])
    assert whole.status_code == 200, whole.text
    assert whole.json() == {"items": step["items"], "next_index": None}

    seen: list[tuple[list[int], int | None]] = []
    next_index: int | None = 0
    while next_index is not None:
        page = (
            await items(http, stack, run["id"], step["id"], from_index=next_index, limit=5)
        ).json()
        next_index = page["next_index"]
        seen.append(([i["index"] for i in page["items"]], next_index))
    assert seen == [([0, 1, 2, 3, 4], 5), ([5, 6, 7, 8, 9], 10), ([10, 11], None)]

    tail = (await items(http, stack, run["id"], step["id"], from_index=11)).json()
    assert tail == {"items": step["items"][11:], "next_index": None}
    none = (await items(http, stack, run["id"], run["steps"][0]["id"])).json()
    assert none == {"items": [], "next_index": None}  # an llm step has no items


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from_index": -1}, "from_index"),
        ({"from_index": 2**31}, "from_index"),
        ({"from_index": "x"}, "from_index"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "1.5"}, "limit"),
    ],
)
async def test_bad_input_is_a_400_naming_its_field(
    http: httpx.AsyncClient, stack: ProcessStack, params: dict[str, Any], field: str
) -> None:
    workflow = await create_workflow(http, stack, "bad", FAN_OUT)
    run_id = await start_run(http, stack, workflow["id"])
    response = await items(http, stack, run_id, workflow["steps"][1]["id"], **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


async def test_wrong_ids_are_404(http: httpx.AsyncClient, stack: ProcessStack) -> None:
    one = await create_workflow(http, stack, "one", FAN_OUT)
    other = await create_workflow(http, stack, "other", FAN_OUT)
    run_id = await start_run(http, stack, one["id"])
    missing = "00000000-0000-0000-0000-000000000000"
    for run, step in [
        (missing, one["steps"][1]["id"]),
        (run_id, missing),
        (run_id, other["steps"][1]["id"]),  # a real step, of another workflow
    ]:
        response = await items(http, stack, run, step)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"


async def test_an_older_runs_items_are_a_409_naming_the_newer_run(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """A re-run resets the steps: the first run's items are no longer stored, and a client
    still paging them is told which run has the step now, not given that run's items."""
    run = await fanned_out(http, stack)
    step_id = run["steps"][1]["id"]
    rerun = await http.post(f"/v1/workflows/{run['workflow_id']}/rerun", headers=stack.headers)
    assert rerun.status_code == 201, rerun.text
    newer = rerun.json()["id"]

    response = await items(http, stack, run["id"], step_id, from_index=5)
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("failed_precondition", "run_id")
    assert newer in error["message"]
    ok = await items(http, stack, newer, step_id)
    assert ok.status_code == 200 and ok.json() == {"items": [], "next_index": None}
    # The older run read whole holds the same steps: it says whose state they are.
    older = (await http.get(f"/v1/runs/{run['id']}", headers=stack.headers)).json()
    assert older["superseded_by"] == newer
    latest = (await http.get(f"/v1/runs/{newer}", headers=stack.headers)).json()
    assert latest["superseded_by"] is None


async def test_a_workflow_read_brief_leaves_out_what_its_steps_produced(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """The page read it whole at each run's end beside the run, which holds the same results:
    every item's output twice."""
    run = await fanned_out(http, stack)
    url = f"/v1/workflows/{run['workflow_id']}"

    whole = (await http.get(url, headers=stack.headers)).json()
    brief = (await http.get(url, params={"brief": "true"}, headers=stack.headers)).json()

    assert [s["output"] for s in whole["steps"]] == [s["output"] for s in run["steps"]]
    assert len(whole["steps"][1]["items"]) == 12
    assert [(s["id"], s["status"]) for s in brief["steps"]] == [
        (s["id"], s["status"]) for s in whole["steps"]
    ]
    assert all(s["output"] == "" and s["items"] == [] for s in brief["steps"])
    assert brief["last_run_id"] == run["id"] and brief["status"] == ev.COMPLETED
    refused = await http.get(url, params={"brief": "sometimes"}, headers=stack.headers)
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "brief"
