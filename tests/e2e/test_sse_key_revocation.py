"""A key revoked or expired while a stream opened with it is live: the stream ends within a
few seconds, as every other call with that key is refused at once, while the streams of other
keys of the tenant on the same shared channel go on to the run's end, with no gap and nothing
twice. Checked only when they opened, streams carried a run's outputs to a revoked key until
the run ended."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from nyxflow import events as ev
from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, EngineClient, RunsClient, open_channel
from nyxflow.errors import Unauthenticated
from nyxflow.v1 import admin_pb2
from nyxflow_gateway.hub import KEY_CHECK_S
from tests.support.gateway_api import steps
from tests.support.inprocess import ADMIN_KEY
from tests.support.processes import ProcessStack
from tests.support.sse_client import frames

# The longest a refused key's stream may go on: one key check, time for its call, and room
# for a stall of a loaded machine; unchecked, it goes on to the run's end (12 s).
BOUND_S = KEY_CHECK_S + 4.0
# Runs ends a watch at its next batch (a tenth of a second here) once the key is revoked, and
# looked it up again only after KEY_CACHE_S (5 s) before: this leaves room for a stall.
WATCH_BOUND_S = 3.5
# 6 steps of 20 tokens 100 ms apart: a run of about 12 s, long past every bound here.
LONG = steps(6, tokens=20, token_delay_ms=100)


@dataclass
class Browser:
    """One EventSource: what it received, when, and when its stream ended."""

    seen: list[tuple[float, int, str]] = field(default_factory=list)
    ended_at: float | None = None
    task: asyncio.Task[None] | None = None

    @property
    def seqs(self) -> list[int]:
        return [seq for _, seq, _ in self.seen]

    async def received(self, count: int) -> None:
        async with asyncio.timeout(30):
            while len(self.seen) < count:
                await asyncio.sleep(0.02)


def follow(http: httpx.AsyncClient, run_id: str, key: str) -> Browser:
    browser = Browser()

    async def read() -> None:
        url = f"/v1/runs/{run_id}/events"
        async with http.stream("GET", url, params={"access_token": key}) as response:
            assert response.status_code == 200
            async for frame in frames(response):
                if frame.event:
                    browser.seen.append((time.monotonic(), frame.seq, frame.event))
        browser.ended_at = time.monotonic()

    browser.task = asyncio.ensure_future(read())
    return browser


async def stopped(browser: Browser) -> None:
    assert browser.task is not None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(browser.task), 30)
    browser.task.cancel()
    with contextlib.suppress(BaseException):
        await browser.task


@contextlib.asynccontextmanager
async def admin_of(stack: ProcessStack) -> AsyncIterator[AdminClient]:
    async with open_channel(stack.runs_addr) as channel:
        yield AdminClient(channel, bearer_metadata(ADMIN_KEY))


async def tenant_keys(
    admin: AdminClient, *names: str, expires_at: float = 0.0
) -> list[admin_pb2.CreateApiKeyResponse]:
    slug = f"t-{uuid.uuid4().hex[:8]}"
    await admin.create_tenant(slug)
    return [await admin.create_api_key(slug, name, expires_at) for name in names]


async def pending_run(http: httpx.AsyncClient, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    workflow = await http.post(
        "/v1/workflows", json={"name": "secret", "steps": LONG}, headers=headers
    )
    assert workflow.status_code == 201, workflow.text
    run = await http.post(f"/v1/workflows/{workflow.json()['id']}/runs", headers=headers)
    assert run.status_code == 201, run.text
    return str(run.json()["id"])


async def revoke_while_both_follow(
    http: httpx.AsyncClient,
    admin: AdminClient,
    run_id: str,
    leaked: admin_pb2.CreateApiKeyResponse,
    kept: admin_pb2.CreateApiKeyResponse,
) -> tuple[Browser, Browser, float]:
    """The leaked key's browser first (its key opens the channel's upstream), then the kept
    key's on the same channel; the leaked key revoked while both read. Both read to their end."""
    revoked = follow(http, run_id, leaked.secret)
    await revoked.received(3)
    other = follow(http, run_id, kept.secret)
    await other.received(6)
    await admin.revoke_api_key(leaked.key.id)
    revoked_at = time.monotonic()
    headers = {"Authorization": f"Bearer {leaked.secret}"}
    assert (await http.get(f"/v1/runs/{run_id}", headers=headers)).status_code == 401
    await stopped(other)
    await stopped(revoked)
    return revoked, other, revoked_at


def assert_whole(browser: Browser) -> None:
    """Every event of the run, once each, in order, to the terminal one."""
    assert browser.seqs == list(range(1, len(browser.seqs) + 1))
    assert browser.seen[-1][2] == ev.RUN_COMPLETED


def assert_stopped(browser: Browser, since: float, bound_s: float) -> None:
    late = [(round(t - since, 2), event) for t, _, event in browser.seen if t > since + bound_s]
    assert not late, f"{len(late)} events reached a refused key's stream: {late[:5]}"
    assert browser.ended_at is not None and browser.ended_at <= since + bound_s


@pytest.mark.timeout(120)
async def test_a_revoked_keys_stream_ends_and_another_keys_on_its_channel_goes_on(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """The leaked key's browser came first: the run was started, and is followed, with its
    key. The other key's browser shares the channel and reads the run to its end."""
    async with admin_of(stack) as admin:
        leaked, kept = await tenant_keys(admin, "leaked", "kept")
        run_id = await pending_run(http, kept.secret)
        revoked, other, revoked_at = await revoke_while_both_follow(
            http, admin, run_id, leaked, kept
        )
    assert_stopped(revoked, revoked_at, BOUND_S)
    assert other.seen[-1][0] > revoked_at + BOUND_S  # the run went on long after
    assert_whole(other)


@pytest.mark.timeout(120)
async def test_a_followed_runs_upstream_of_a_revoked_key_is_taken_over_by_another_key(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """A run started elsewhere: the gateway follows it through runs' WatchRun, opened with the
    leaked key's. Runs ends that watch once the key is revoked; the gateway ends that key's
    browser at once and goes on through the other's key."""
    async with admin_of(stack) as admin, open_channel(stack.engine_addr) as engine:
        leaked, kept = await tenant_keys(admin, "leaked", "kept")
        run_id = await pending_run(http, kept.secret)
        starter = EngineClient(engine, bearer_metadata(kept.secret)).execute_batches(run_id)
        await anext(starter)  # claimed: running
        revoked, other, revoked_at = await revoke_while_both_follow(
            http, admin, run_id, leaked, kept
        )
        await starter.aclose()
    assert_stopped(revoked, revoked_at, 1.5)  # told by runs, not found by the periodic check
    assert_whole(other)


@pytest.mark.timeout(120)
async def test_a_stream_ends_when_its_key_expires(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    async with admin_of(stack) as admin:
        (short,) = await tenant_keys(admin, "short", expires_at=time.time() + 4)
        expires_at = time.monotonic() + (4 - 0.1)
        run_id = await pending_run(http, short.secret)
        browser = follow(http, run_id, short.secret)
        await browser.received(3)
        await stopped(browser)
    assert_stopped(browser, expires_at, BOUND_S)
    assert browser.seen[-1][2] != ev.RUN_COMPLETED  # ended well before the run


@pytest.mark.timeout(120)
async def test_watch_run_of_a_revoked_key_ends_unauthenticated(stack: ProcessStack) -> None:
    """Over gRPC too: runs ends a WatchRun at its next batch once its key is revoked."""
    async with (
        admin_of(stack) as admin,
        open_channel(stack.runs_addr) as runs_channel,
        open_channel(stack.engine_addr) as engine,
    ):
        leaked, kept = await tenant_keys(admin, "leaked", "kept")
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
            run_id = await pending_run(http, kept.secret)
        starter = EngineClient(engine, bearer_metadata(kept.secret)).execute_batches(run_id)
        await anext(starter)
        watch = RunsClient(runs_channel, bearer_metadata(leaked.secret))
        seen: list[tuple[float, str]] = []

        async def read() -> None:
            async for batch in watch.watch_run_batches(run_id):
                seen.extend((time.monotonic(), e.type) for e in batch)

        reading = asyncio.ensure_future(read())
        async with asyncio.timeout(30):
            while len(seen) < 3:
                await asyncio.sleep(0.02)
        await admin.revoke_api_key(leaked.key.id)
        revoked_at = time.monotonic()
        with pytest.raises(Unauthenticated):
            await asyncio.wait_for(reading, 30)
        ended_at = time.monotonic()
        await starter.aclose()
    assert ended_at < revoked_at + WATCH_BOUND_S and seen[-1][1] != ev.RUN_COMPLETED
    assert not [e for t, e in seen if t > revoked_at + WATCH_BOUND_S]
