"""ListProjectNotes reads a project's notes page by page, through the runs API, the gateway's
GET /v1/projects/{id}/notes and `nyxflow project notes`: every note once, whole, newest first,
notes added at the same instant included, no page past about 1,000,000 characters. Before it,
the notes past GetProject's budget were stored and counted but could not be read at all."""

from __future__ import annotations

import base64
import json
import re

import httpx
import pytest
from sqlalchemy import select

from nyxflow.errors import InvalidArgument, NotFound
from nyxflow_runs.models import ProjectNote, Tenant
from tests.integration.conftest import CliCall
from tests.support.direct import Direct
from tests.support.inprocess import Clients

# (id, created_at): ties on created_at, ids that sort unlike the order they were made
NOTES = [("n-c", 100.0), ("n-a", 100.0), ("n-b", 100.0), ("n-e", 200.0), ("n-d", 200.0)]
NEWEST_FIRST = ["n-e", "n-d", "n-c", "n-b", "n-a"]
LONGEST = 100_000  # the longest note AddProjectNote takes
PER_PAGE_CHARS = 1_000_000  # a page's notes hold about this many characters


async def a_project_with_notes(runs: Clients, db: Direct) -> str:
    project = await runs.runs.create_project("noted")
    async with db.sessions.begin() as session:
        tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == "default"))
        assert tenant_id is not None
        session.add_all(
            ProjectNote(
                id=i, tenant_id=tenant_id, project_id=project.id, text=f"text of {i}", created_at=c
            )
            for i, c in NOTES
        )
    return project.id


async def every_page(runs: Clients, project_id: str, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await runs.runs.list_project_notes(project_id, limit, token)
        pages.append([n.id for n in page.notes])
        assert all(n.text == f"text of {n.id}" for n in page.notes)
        token = page.next_page_token
        if not token:
            return pages


async def test_paging_gives_every_note_once_newest_first(runs: Clients, db: Direct) -> None:
    project_id = await a_project_with_notes(runs, db)
    for limit in (1, 2, 3, 5, 50):
        pages = await every_page(runs, project_id, limit)
        assert [i for p in pages for i in p] == NEWEST_FIRST, (limit, pages)
        assert all(len(p) == limit for p in pages[:-1]) and 0 < len(pages[-1]) <= limit, pages


async def test_long_notes_are_paged_within_the_budget(runs: Clients) -> None:
    project = await runs.runs.create_project("long")
    texts = [f"{i:04d}" + "n" * (LONGEST - 4) for i in range(25)]  # 2.5 M characters
    for text in texts:
        await runs.runs.add_project_note(project.id, text)

    read: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = await runs.runs.list_project_notes(project.id, 500, token)
        read += [n.text for n in page.notes]
        sizes.append(len(page.notes))
        token = page.next_page_token
        if not token:
            break

    assert read == texts[::-1]  # every note whole, once, newest first
    assert len(sizes) > 2 and all(0 < n * LONGEST <= PER_PAGE_CHARS for n in sizes), sizes
    # GetProject gives the first page's notes, and counts the rest
    whole = await runs.runs.get_project(project.id)
    assert [n.text for n in whole.notes] == read[: sizes[0]]
    assert whole.notes_left_out == len(texts) - sizes[0]


async def test_a_bad_limit_token_or_project_is_refused(runs: Clients, db: Direct) -> None:
    project_id = await a_project_with_notes(runs, db)
    assert len((await runs.runs.list_project_notes(project_id, 500)).notes) == len(NOTES)
    with pytest.raises(InvalidArgument) as raised:
        await runs.runs.list_project_notes(project_id, 501)
    assert raised.value.field == "limit"
    for token in (
        "not a token",
        base64.urlsafe_b64encode(b"[true, 1]").decode(),
        base64.urlsafe_b64encode(b'[1.0, "a\\u0000b"]').decode(),
    ):
        with pytest.raises(InvalidArgument) as raised:
            await runs.runs.list_project_notes(project_id, page_token=token)
        assert raised.value.field == "page_token", token
    with pytest.raises(NotFound):
        await runs.runs.list_project_notes("00000000-0000-0000-0000-000000000000")
    with pytest.raises(InvalidArgument) as raised:
        await runs.runs.list_project_notes("")
    assert raised.value.field == "project_id"


async def test_the_gateway_pages_notes(
    runs: Clients, db: Direct, gateway: httpx.AsyncClient
) -> None:
    project_id = await a_project_with_notes(runs, db)
    seen: list[str] = []
    params = {"limit": "2"}
    while True:
        response = await gateway.get(f"/v1/projects/{project_id}/notes", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"notes", "next_page_token"}
        seen += [n["id"] for n in body["notes"]]
        assert all(n["text"] == f"text of {n['id']}" for n in body["notes"])
        if body["next_page_token"] is None:
            break
        params["page_token"] = body["next_page_token"]
    assert seen == NEWEST_FIRST

    for query, field in (("limit=501", "limit"), ("page_token=bm9wZQ", "page_token")):
        response = await gateway.get(f"/v1/projects/{project_id}/notes?{query}")
        assert response.status_code == 400, response.text
        assert response.json()["error"]["field"] == field, response.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_cli_reads_notes_page_by_page_or_all(
    runs: Clients, db: Direct, nyxflow: CliCall
) -> None:
    project_id = await a_project_with_notes(runs, db)
    listing = ("project", "notes", project_id)

    every = await nyxflow(*listing, "--limit", "2", "--all", "--json")
    assert every.exit_code == 0, every.output
    assert [n["id"] for n in json.loads(every.stdout)] == NEWEST_FIRST and every.stderr == ""

    seen: list[str] = []
    page: tuple[str, ...] = ()
    while True:
        listed = await nyxflow(*listing, "--limit", "2", *page)
        assert listed.exit_code == 0, listed.output
        shown = re.findall(r"^note (\S+) · ", listed.stdout, re.MULTILINE)
        assert all(f"\ntext of {i}\n" in listed.stdout for i in shown), listed.stdout
        seen += shown
        if not listed.stderr:
            break
        (token,) = re.findall(r"--page-token (\S+)", listed.stderr)
        page = ("--page-token", token)
    assert seen == NEWEST_FIRST

    refused = await nyxflow(*listing, "--limit", "501")
    assert refused.exit_code == 2 and "--limit" in refused.stderr, refused.output
