"""The gateway under hostile clients: stampedes of connects and starts, a client that never
reads, and hundreds that vanish without closing. Runs are untouched, streams stay whole."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest

from nyxflow import events as ev
from nyxflow.cli.supervisor import wait_http_ok
from nyxflow.client import EngineClient
from nyxflow.errors import NyxflowError
from nyxflow.v1 import common_pb2 as pb
from tests.faults.helpers import (
    assert_full_stream,
    db_events,
    debug_streams,
    fetch,
    grpc_clients,
    rss_kb,
    run_row,
    timed_events,
    wait_status,
)
from tests.faults.invariants import assert_invariants
from tests.support.databases import unavailable
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, start_run, steps
from tests.support.ports import free_port
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events

FINISHED = frozenset(ev.FINISHED_RUN_STATUSES)


def claims(stack: ProcessStack, run_id: str) -> int:
    """How many times an engine claimed the run: each claim won is one execution."""
    return sum(
        json.loads(line).get("msg") == "run claimed" and run_id in line
        for name in stack.procs
        if name.startswith("engine")
        for line in stack.log_text(name).splitlines()
    )


async def _execute(engine: EngineClient, run_id: str) -> list[pb.RunEvent] | grpc.StatusCode:
    """A direct Execute of the run: its whole stream if this call won the claim, else the
    code it was refused with."""
    try:
        return [e async for e in engine.execute(run_id)]
    except NyxflowError as error:
        return error.code


@pytest.mark.timeout(150)
async def test_stampede_of_starts_and_connects(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """200 clicks on "run" for a workflow with no run yet: one creates it, 199 are refused.
    Then 200 browsers open it through two gateways, each on its own engine, while 40 direct
    Execute calls go to both engines: every path to the claim at once, so its compare-and-set
    is raced (one gateway alone opens one upstream per run, and the race stops in its hub)."""
    dsn = stack.database_url
    engine2 = f"127.0.0.1:{free_port()}"
    port2 = free_port()
    stack.add_replica("engine2", "engine", NYXFLOW_ENGINE_LISTEN=engine2)
    stack.add_replica(
        "gateway2", "gateway", NYXFLOW_GATEWAY_PORT=str(port2), NYXFLOW_ENGINE_ADDR=engine2
    )
    stack.start("engine2")
    stack.start("gateway2")
    try:
        workflow = await create_workflow(
            http, stack, "stampede", steps(4, tokens=20, token_delay_ms=20)
        )

        async def post() -> httpx.Response:
            return await http.post(f"/v1/workflows/{workflow['id']}/runs", headers=stack.headers)

        posts = await asyncio.gather(*(post() for _ in range(200)))
        codes = Counter(r.status_code for r in posts)
        assert codes == Counter({201: 1, 409: 199}), codes
        created = await fetch(dsn, "SELECT id FROM runs WHERE workflow_id = $1", workflow["id"])
        pending = next(str(r.json()["id"]) for r in posts if r.status_code == 201)
        assert [r["id"] for r in created] == [pending], "one run for the workflow, no other"

        urls = [
            f"{base}/v1/runs/{pending}/events"
            for base in (stack.base_url, f"http://127.0.0.1:{port2}")
        ]
        async with grpc_clients(stack.runs_addr, stack.engine_addr, engine2) as (_, engines):
            streams, executes = await asyncio.gather(
                asyncio.gather(
                    *(read_events(http, urls[i % 2], stack.headers) for i in range(200))
                ),
                asyncio.gather(*(_execute(engines[i % 2], pending) for i in range(40))),
            )

        run = await run_row(dsn, pending)
        assert run["status"] == ev.COMPLETED
        # One execution: one claim won by an engine, and each step started and completed once.
        assert claims(stack, pending) == 1
        events = await db_events(dsn, pending)
        types = [e["type"] for e in events]
        assert types.count(ev.RUN_STARTED) == 1
        assert types.count(ev.RUN_COMPLETED) == 1
        for kind in (ev.STEP_STARTED, ev.STEP_COMPLETED):
            names = sorted(json.loads(e["data"])["name"] for e in events if e["type"] == kind)
            assert names == [f"s{i}" for i in range(4)], f"{kind}: {names}"
        for stream in streams:
            assert_full_stream(stream, run["last_seq"], ev.RUN_COMPLETED)
        # A direct call either won the claim (and streamed the whole run) or was refused it.
        won = [r for r in executes if isinstance(r, list)]
        refused = Counter(r for r in executes if not isinstance(r, list))
        assert len(won) <= 1 and set(refused) <= {grpc.StatusCode.FAILED_PRECONDITION}, refused
        for stream in won:
            assert [e.seq for e in stream] == list(range(1, run["last_seq"] + 1))
        print(f"direct Execute calls: {len(won)} won, {dict(refused)}")
    finally:
        stack.kill("gateway2")
        stack.kill("engine2")
    # Nothing here is swept: a violation seen once is one.
    await assert_invariants(dsn, settle_s=0)


@contextlib.asynccontextmanager
async def raw_get(
    port: int, path: str, stack: ProcessStack, rcvbuf: int | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """An HTTP/1.1 GET on a plain socket: the test decides what is (never) read."""
    sock = socket.socket()
    if rcvbuf is not None:  # a tiny window: the server's writes back up at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    auth = stack.headers["Authorization"]
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
    await writer.drain()
    try:
        yield reader, writer
    finally:
        abort(writer)


def abort(writer: asyncio.StreamWriter) -> None:
    """Vanish: SO_LINGER 0 turns close into a RST, no FIN handshake, as a dead peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# The slow client's bound, and the frames a followed run keeps for late browsers: together
# what the gateway may hold for this scenario, beside a stream many times their size.
QUEUE_BYTES = 256 * 1024
KEEP_BYTES = 1024 * 1024
SLOW_STEPS = 40
STEP_OUTPUT = " ".join(f"word{i}" for i in range(40_000))  # ~390 KB; twice that streamed
# Gateway RSS the scenario may add beyond those bounds: allocator slack and the readers' writes.
RSS_SLACK_MB = 12
LAG_P99_S = 1.0  # commit -> receive, for the clients that read


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of a socket (tcp_info's first byte), read without reading it."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # reset by the peer, or its FIN received


async def read_to_end(reader: asyncio.StreamReader, timeout_s: float) -> tuple[bytes, str]:
    """Everything left on the connection and how it ended: "eof", "reset" (or "open")."""
    got = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(1 << 16):
                got += chunk
    except (ConnectionResetError, ConnectionAbortedError):
        return bytes(got), "reset"
    except TimeoutError:
        return bytes(got), "open"
    return bytes(got), "eof"


@pytest.mark.timeout(180)
async def test_a_client_that_never_reads_harms_no_one(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    dsn = stack.database_url
    # A second gateway with a small per-client byte bound, and few frames kept per run.
    port = free_port()
    stack.add_replica(
        "gateway2",
        "gateway",
        NYXFLOW_GATEWAY_PORT=str(port),
        NYXFLOW_SSE_QUEUE_BYTES=str(QUEUE_BYTES),
        NYXFLOW_SSE_KEEP_BYTES=str(KEEP_BYTES),
    )
    stack.start("gateway2")
    base = f"http://127.0.0.1:{port}"
    try:
        pid = stack.procs["gateway2"].pid
        workflow = await create_workflow(
            http,
            stack,
            "slow-client",
            steps(SLOW_STEPS, script=STEP_OUTPUT, tokens=400, token_delay_ms=2, max_tokens=16000),
        )
        run_id = await start_run(http, stack, workflow["id"])
        baseline = rss_kb(pid)
        # The slow client starts the run, then never reads a byte.
        async with raw_get(port, f"/v1/runs/{run_id}/events", stack, rcvbuf=4096) as (
            slow,
            writer,
        ):
            sock = writer.get_extra_info("socket")
            readers = [
                asyncio.create_task(timed_events(http, stack, run_id, base)) for _ in range(3)
            ]
            peak, cut_while = baseline, None
            while not all(r.done() for r in readers):
                peak = max(peak, rss_kb(pid))
                if cut_while is None and tcp_state(sock) in (TCP_CLOSE, TCP_CLOSE_WAIT):
                    cut_while = (await run_row(dsn, run_id))["status"]
                await asyncio.sleep(0.1)
            peak = max(peak, rss_kb(pid))
            # Dropped early: the gateway closed its connection while the run still went on.
            assert cut_while == ev.RUNNING, f"slow client's socket closed while {cut_while}"
            rest, how = await read_to_end(slow, 10)
            assert how in ("eof", "reset"), f"slow client's connection still {how}"
            assert b"event: run_completed" not in rest
            run = await wait_status(dsn, run_id, FINISHED, 30)
            assert run["status"] == ev.COMPLETED
            # The others had all of it, in order, and promptly.
            lags: list[float] = []
            for reader in readers:
                received = reader.result()
                assert_full_stream(received, run["last_seq"], ev.RUN_COMPLETED)
                lags += [r.at - r.frame.json["at"] for r in received]
        sizes = "SELECT sum(octet_length(data::text)) AS n FROM run_events WHERE run_id = $1"
        streamed = (await fetch(dsn, sizes, run_id))[0]["n"]
        lag_p99 = sorted(lags)[int(len(lags) * 0.99)]
        grown_mb = (peak - baseline) / 1024
        bound_mb = (QUEUE_BYTES + KEEP_BYTES) / 2**20 + RSS_SLACK_MB
        print(
            f"stream {streamed / 2**20:.1f} MB; slow client read {len(rest)} B more, {how}; "
            f"lag p99 {lag_p99 * 1000:.0f} ms; gateway RSS +{grown_mb:.1f} MB "
            f"(bound {bound_mb:.1f} MB)"
        )
        assert streamed > 2 * bound_mb * 2**20, "the stream must dwarf what may be held"
        assert lag_p99 < LAG_P99_S, f"readers' p99 lag {lag_p99:.3f} s"
        assert grown_mb < bound_mb, f"gateway RSS grew {grown_mb:.1f} MB > {bound_mb:.1f} MB"
    finally:
        stack.kill("gateway2")
    # Nothing here is swept: a violation seen once is one.
    await assert_invariants(dsn, settle_s=0)


# Browsers in a network namespace of their own, joined to the host by a veth pair: when its
# link goes down they vanish without a FIN or RST, as behind a dead network or machine.
CLIENTS = """
import asyncio, os, sys

host, port, *runs = sys.argv[1:]
auth = os.environ["NYXC_AUTH"]


async def connect(run):
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /v1/runs/{run}/events HTTP/1.1\\r\\nHost: x\\r\\n"
                 f"Authorization: {auth}\\r\\n\\r\\n".encode())
    head = await reader.readuntil(b"\\r\\n\\r\\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return reader, writer


async def drain(reader, writer):  # browsers that read: none is dropped as slow
    while await reader.read(1 << 16):
        pass


async def main():
    readers = await asyncio.gather(*(connect(r) for r in runs for _ in range(100)))
    print("connected", len(readers), flush=True)
    await asyncio.gather(*(drain(*r) for r in readers))


asyncio.run(main())
"""
PEER_TIMEOUT_S = 3  # the gateway's: a peer silent this long is given up


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def vanishing_network() -> Iterator[tuple[str, str, str]]:
    """(namespace, its peer's address on the host, that address's veth inside the namespace)."""
    tag = f"{os.getpid() % 10000}{random.randrange(100)}"
    ns, outer, inner = f"nyxf{tag}", f"nyxh{tag}", f"nyxn{tag}"
    subnet = f"10.213.{random.randrange(256)}.{4 * random.randrange(64)}"
    base = subnet.rsplit(".", 1)
    host_ip, ns_ip = (f"{base[0]}.{int(base[1]) + k}" for k in (1, 2))
    try:
        ip("netns", "add", ns)
    except (OSError, subprocess.SubprocessError) as error:
        unavailable("a network namespace (ip netns, as root)", error)
    try:
        ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", outer)
        ip("link", "set", outer, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")
        yield ns, host_ip, inner
    finally:
        # The pair by its host end: the namespace itself goes only once its sockets have.
        for args in (("link", "del", outer), ("netns", "del", ns)):
            with contextlib.suppress(subprocess.SubprocessError):
                ip(*args)


@pytest.mark.timeout(180)
async def test_vanishing_clients_release_their_upstreams(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    dsn = stack.database_url
    with vanishing_network() as (ns, host_ip, inner):
        # A gateway on the namespace's peer address, quick to give up on silent peers.
        port = free_port()
        extra = {
            "NYXFLOW_GATEWAY_HOST": host_ip,
            "NYXFLOW_GATEWAY_PORT": str(port),
            "NYXFLOW_PEER_TIMEOUT_S": str(PEER_TIMEOUT_S),
            "NYXFLOW_SSE_HEARTBEAT_S": "1",
        }
        stack.add_replica("gateway3", "gateway", **extra)
        log = (stack.logs / "gateway3.log").open("ab")
        stack.procs["gateway3"] = subprocess.Popen(
            [sys.executable, "-m", "nyxflow_gateway"],
            env={**stack.env(), **extra},
            stdout=log,
            stderr=log,
        )
        base = f"http://{host_ip}:{port}"
        clients: asyncio.subprocess.Process | None = None
        try:
            await asyncio.to_thread(wait_http_ok, f"{base}/healthz", 30)
            baseline = await debug_streams(http, stack, base)
            # Runs that outlast the whole check, streaming all along.
            run_ids = []
            for i in range(5):
                workflow = await create_workflow(
                    http, stack, f"vanish-{i}", steps(2, tokens=60, token_delay_ms=250)
                )
                run_ids.append(await start_run(http, stack, workflow["id"]))
            # 100 browsers per run, the first of each starting it.
            clients = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns, sys.executable, "-c", CLIENTS,
                host_ip, str(port), *run_ids,
                env={**os.environ, "NYXC_AUTH": stack.headers["Authorization"]},
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert clients.stdout is not None
            line = await asyncio.wait_for(clients.stdout.readline(), 60)
            assert line == b"connected 500\n", line
            during = await debug_streams(http, stack, base)
            assert during["upstream_streams"] == baseline["upstream_streams"] + 5
            # Vanish: their link goes down first, so nothing they send on exit arrives.
            ip("-n", ns, "link", "set", inner, "down")
            clients.kill()
            await clients.wait()
            await eventually(
                lambda: debug_streams(http, stack, base),
                lambda s: (
                    s["upstream_streams"] == baseline["upstream_streams"]
                    and s["channels"] == baseline["channels"]
                ),
                timeout_s=PEER_TIMEOUT_S + 12,
                interval_s=0.2,
                what="upstreams back to the baseline",
            )
            # Released while the runs went on: no run ended to free them.
            statuses = [(await run_row(dsn, r))["status"] for r in run_ids]
            assert statuses == [ev.RUNNING] * 5, statuses
        finally:
            if clients is not None and clients.returncode is None:
                clients.kill()
                await clients.wait()
            stack.kill("gateway3")
    # The runs never noticed: each completes once, and its stream replays whole.
    for run_id in run_ids:
        run = await wait_status(dsn, run_id, FINISHED, 60)
        assert run["status"] == ev.COMPLETED
        types = [e["type"] for e in await db_events(dsn, run_id)]
        assert types.count(ev.RUN_STARTED) == 1
        assert_full_stream(
            await read_events(http, f"/v1/runs/{run_id}/events", stack.headers),
            run["last_seq"],
            ev.RUN_COMPLETED,
        )
    # Nothing here is swept: a violation seen once is one.
    await assert_invariants(dsn, settle_s=0)
