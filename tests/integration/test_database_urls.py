"""The PostgreSQL URLs hosts hand out serve runs: libpq's options reach asyncpg as arguments,
on the hot path's own pool too (it sent `ssl` to the server as a setting, and the server
refused every call), and in the README's `postgresql+asyncpg://` form as in the host's."""

from __future__ import annotations

import pytest

from nyxflow import events as ev
from tests.support.inprocess import clients, runs_service
from tests.support.workflows import chain


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("scheme", "query"),
    [
        ("postgresql://", "?sslmode=disable"),
        ("postgres://", "?sslmode=disable&connect_timeout=10"),
        ("postgresql+asyncpg://", "?sslmode=disable&target_session_attrs=read-write"),
    ],
)
async def test_a_hosts_url_with_libpq_options_serves_runs(
    database_url: str, scheme: str, query: str
) -> None:
    url = scheme + database_url.split("://", 1)[1] + query
    async with runs_service(url) as settings, clients(settings.runs_listen) as c:
        workflow = await c.runs.create_workflow("ssl", chain(1))
        run = await c.runs.create_run(workflow.id)  # the hot path's create
        assert run.status == ev.PENDING
        assert [r.id for r in await c.runs.list_runs(workflow.id)] == [run.id]
