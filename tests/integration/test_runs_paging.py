"""ListRuns page by page, through the runs API and the gateway's GET /v1/runs: every run once,
newest first, runs created at the same instant included; a limit past 500 and a token no page
ended with are refused, naming the field. And the workflows list's latest run of each."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence

import httpx
import pytest
from sqlalchemy import select

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs.models import Run, Tenant
from tests.integration.conftest import CliCall
from tests.support.direct import Direct
from tests.support.inprocess import Clients

# (id, created_at, status): ties on created_at, ids that sort unlike the order they were made
RUNS = [
    ("run-c", 100.0, "completed"),
    ("run-a", 100.0, "failed"),
    ("run-b", 100.0, "completed"),
    ("run-e", 200.0, "cancelled"),
    ("run-d", 200.0, "completed"),
    ("run-f", 50.0, "completed"),
    ("run-g", 300.0, "completed"),
]


Stored = dict[str, tuple[float, str]]  # run id: (created_at, status)


def newest_first(stored: Stored, status: str = "") -> list[str]:
    """The ids in ListRuns' order: created_at, then id, descending."""
    chosen = [i for i, (_, s) in stored.items() if not status or s == status]
    return sorted(chosen, key=lambda i: (stored[i][0], i), reverse=True)


async def add_runs(db: Direct, workflow_id: str, runs: Sequence[tuple[str, float, str]]) -> Stored:
    """Runs stored as given (a run's id prefixed by its workflow's)."""
    stored = {f"{workflow_id[:8]}-{i}": (created_at, status) for i, created_at, status in runs}
    async with db.sessions.begin() as session:
        tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == "default"))
        assert tenant_id is not None
        session.add_all(
            Run(id=i, tenant_id=tenant_id, workflow_id=workflow_id, status=s, created_at=c)
            for i, (c, s) in stored.items()
        )
    return stored


async def a_workflow(runs: Clients, name: str = "w") -> pb.Workflow:
    return await runs.runs.create_workflow(name, [pb.StepSpec(name="a", kind="llm", prompt="p")])


async def test_paging_gives_every_run_once_in_order(runs: Clients, db: Direct) -> None:
    workflow, other = await a_workflow(runs), await a_workflow(runs, "other")
    ours = await add_runs(db, workflow.id, RUNS)
    theirs = await add_runs(
        db, other.id, [("run-x", 100.0, "completed"), ("run-y", 400.0, "failed")]
    )
    everything = ours | theirs
    for limit, workflow_id, status, expected in (
        (2, workflow.id, "", newest_first(ours)),
        (3, workflow.id, "", newest_first(ours)),  # 7 runs: the last page holds one
        (7, workflow.id, "", newest_first(ours)),  # one page whole, no token for an empty one
        (1, "", "", newest_first(everything)),
        (2, "", "completed", newest_first(everything, "completed")),
    ):
        pages: list[list[str]] = []
        token = ""
        while True:
            page = await runs.runs.list_runs_page(workflow_id, status, limit, token)
            pages.append([r.id for r in page.runs])
            token = page.next_page_token
            if not token:
                break
        assert [i for p in pages for i in p] == expected, (limit, status, pages)
        assert all(len(p) == limit for p in pages[:-1]) and 0 < len(pages[-1]) <= limit, pages


async def test_a_limit_past_500_and_a_token_no_page_ended_with_are_refused(
    runs: Clients,
) -> None:
    assert await runs.runs.list_runs(limit=500) == []
    with pytest.raises(InvalidArgument) as raised:
        await runs.runs.list_runs(limit=501)
    assert raised.value.field == "limit"
    for token in (
        "not a token",
        base64.urlsafe_b64encode(b'{"created_at": 1}').decode(),
        base64.urlsafe_b64encode(b'["NaN", "x"]').decode(),
        base64.urlsafe_b64encode(b'[1e999, "x"]').decode(),
        base64.urlsafe_b64encode(b'[true, "x"]').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        # An int past a float's range (isfinite overflows), a NUL in the id (PostgreSQL
        # cannot compare text holding one): INTERNAL, and SQLite listed runs with the latter.
        base64.urlsafe_b64encode(b"[" + b"9" * 400 + b', "x"]').decode(),
        base64.urlsafe_b64encode(b'[1.0, "a\\u0000b"]').decode(),
    ):
        with pytest.raises(InvalidArgument) as raised:
            await runs.runs.list_runs_page(page_token=token)
        assert raised.value.field == "page_token", token


async def test_the_gateway_pages_runs_too(
    runs: Clients, db: Direct, gateway: httpx.AsyncClient
) -> None:
    workflow = await a_workflow(runs)
    stored = await add_runs(db, workflow.id, RUNS)
    seen: list[str] = []
    params = {"workflow_id": workflow.id, "limit": "3"}
    while True:
        response = await gateway.get("/v1/runs", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"runs", "next_page_token"}
        seen += [r["id"] for r in body["runs"]]
        if body["next_page_token"] is None:
            break
        params["page_token"] = body["next_page_token"]
    assert seen == newest_first(stored)

    for query, field in (("limit=501", "limit"), ("page_token=bm9wZQ", "page_token")):
        response = await gateway.get(f"/v1/runs?{query}")
        assert response.status_code == 400, response.text
        assert response.json()["error"]["field"] == field, response.text


async def test_the_workflows_list_shows_each_workflow_s_latest_run(
    runs: Clients, db: Direct
) -> None:
    """The latest by created_at, and among runs created at the same instant the greatest id
    (as ListRuns orders them); a workflow never run has none."""
    first, second, never = [await a_workflow(runs, n) for n in ("first", "second", "never")]
    await add_runs(db, first.id, RUNS)  # run-g, created last
    await add_runs(db, second.id, [r for r in RUNS if r[1] <= 200.0])  # run-e beats run-d
    listed = {w.id: (w.last_run_id, w.status) for w in await runs.runs.list_workflows()}
    assert listed == {
        first.id: (f"{first.id[:8]}-run-g", "completed"),
        second.id: (f"{second.id[:8]}-run-e", "cancelled"),
        never.id: ("", "idle"),
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_cli_lists_runs_page_by_page_or_all(
    runs: Clients, db: Direct, nyxflow: CliCall
) -> None:
    workflow = await a_workflow(runs)
    expected = newest_first(await add_runs(db, workflow.id, RUNS))
    listing = ("run", "list", "--workflow", workflow.id, "--json")

    every = await nyxflow(*listing, "--limit", "3", "--all")
    assert every.exit_code == 0, every.output
    assert [r["id"] for r in json.loads(every.stdout)] == expected and every.stderr == ""

    seen: list[str] = []
    page: tuple[str, ...] = ()
    while True:
        listed = await nyxflow(*listing, "--limit", "3", *page)
        assert listed.exit_code == 0, listed.output
        seen += [r["id"] for r in json.loads(listed.stdout)]
        if not listed.stderr:
            break
        (token,) = re.findall(r"--page-token (\S+)", listed.stderr)
        page = ("--page-token", token)
    assert seen == expected

    refused = await nyxflow(*listing, "--limit", "501")
    assert refused.exit_code == 2 and "--limit" in refused.stderr, refused.output
