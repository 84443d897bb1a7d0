"""`nyxflow up` as a real process: whatever stops it stops its services (the engine before
runs, so that the runs in flight are paused), a service that exits while starting is reported
at once, a port in use is refused, and runs and the engine get a metrics port each."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port

UP_LINE = "Ctrl-C stops all three."


def up_environment(**env: str) -> dict[str, str]:
    """Free ports for the three services, and nothing else of NYXFLOW_ from outside."""
    runs, engine = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NYXFLOW_")}
    environment.update(
        NYXFLOW_RUNS_LISTEN=runs,
        NYXFLOW_RUNS_ADDR=runs,
        NYXFLOW_ENGINE_LISTEN=engine,
        NYXFLOW_ENGINE_ADDR=engine,
        NYXFLOW_GATEWAY_PORT=str(free_port()),
    )
    environment.update(env)  # a port of the test's own, say
    return environment


@contextlib.contextmanager
def nyxflow_up(
    tmp_path: Path, *args: str, environment: dict[str, str] | None = None, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`nyxflow up --no-demo` on free ports (or `environment`'s), in `tmp_path`, its stderr (the
    services' too) in up.log."""
    command = [sys.executable, "-m", "nyxflow.cli.main", "up", "--no-demo", *args]
    with (tmp_path / "up.log").open("wb") as log:
        # a session of its own: the cleanup below reaches `up` and whatever it started
        up = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=environment or up_environment(**env),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield up
    finally:
        services = children_of(up.pid)  # each in a process group of its own
        if up.poll() is None:
            up.send_signal(signal.SIGINT)  # Ctrl-C, which stopped them before any fix
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(60)
        # whatever `up` did or did not stop: nothing started here outlives the test
        for pid in services:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
        up.wait()


def log_of(tmp_path: Path) -> str:
    return (tmp_path / "up.log").read_text(errors="replace")


def wait_until_up(tmp_path: Path, up: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while UP_LINE not in log_of(tmp_path):
        assert up.poll() is None, f"`up` ended ({up.returncode}):\n{log_of(tmp_path)[-2000:]}"
        assert time.monotonic() < deadline, f"not up in {timeout_s}s:\n{log_of(tmp_path)[-2000:]}"
        time.sleep(0.2)


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_stops_the_services_as_ctrl_c_does(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """What kill, systemd, docker stop and `timeout` send (SIGHUP: a closed terminal)."""
    with nyxflow_up(tmp_path) as up:
        wait_until_up(tmp_path, up)
        services = children_of(up.pid)
        assert len(services) == 3
        up.send_signal(signum)
        assert up.wait(30) == 0, log_of(tmp_path)[-2000:]
        assert [pid for pid in services if running(pid)] == []
        assert "stopping" in log_of(tmp_path)


def test_a_service_that_exits_while_starting_is_reported_at_once(tmp_path: Path) -> None:
    # the engine refuses a lease of 0 s and exits; `up` would wait its whole 60 s for it
    with nyxflow_up(tmp_path, "--start-timeout", "60", NYXFLOW_LEASE_TTL_S="0") as up:
        assert up.wait(30) == 1
    log = log_of(tmp_path)
    assert "engine exited (exit code 1) before it was ready" in log, log[-2000:]


def _two_free_ports() -> int:
    """A port whose next one is free too."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def test_runs_and_the_engine_serve_metrics_on_a_port_each(tmp_path: Path) -> None:
    port = _two_free_ports()
    with nyxflow_up(tmp_path, NYXFLOW_METRICS_PORT=str(port)) as up:
        wait_until_up(tmp_path, up)
        for each in (port, port + 1):  # runs, engine
            with urllib.request.urlopen(f"http://127.0.0.1:{each}/metrics", timeout=5) as page:
                assert b"nyxflow_runs_created_total" in page.read()


def test_the_demo_run_and_its_url_are_printed_whole_on_a_narrow_terminal(tmp_path: Path) -> None:
    """Wrapped at the terminal's 80 columns, the run id and the SSE URL could not be copied."""
    with nyxflow_up(tmp_path, "--demo", COLUMNS="80") as up:
        wait_until_up(tmp_path, up)
        lines = log_of(tmp_path).splitlines()
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    (demo,) = [line for line in lines if line.startswith("  demo ")]
    run_id = re.fullmatch(rf"  demo +workflow {uuid}, run ({uuid}) \(pending\)", demo)
    assert run_id is not None, demo
    (sse,) = [line for line in lines if line.startswith("  SSE ")]
    assert re.fullmatch(
        rf"  SSE +http://127\.0\.0\.1:\d+/v1/runs/{run_id[1]}/events\?access_token=dev-key", sse
    ), sse


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The processes of `pids` still running after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


SLOW_STEPS = [
    {
        "name": f"s{i}",
        "kind": "llm",
        "prompt": "x",
        "provider": "local",
        "params": {"tokens": 400, "token_delay_ms": 20},
    }
    for i in range(3)
]


async def _runs_under_way(gateway: str, count: int) -> list[str]:
    """`count` runs started, each streaming its first step's tokens."""
    headers = {"Authorization": "Bearer dev-key"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway}", timeout=30) as http:

        async def one(i: int) -> str:
            workflow = await http.post(
                "/v1/workflows", json={"name": f"w{i}", "steps": SLOW_STEPS}, headers=headers
            )
            run = await http.post(f"/v1/workflows/{workflow.json()['id']}/runs", headers=headers)
            run_id = str(run.json()["id"])
            async with http.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as sse:
                async for line in sse.aiter_lines():
                    if line.startswith("event: step_delta"):
                        break  # under way; the stream may go
            return run_id

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def _statuses(tmp_path: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(tmp_path / ".nyxflow" / "nyxflow.db")) as db:
        return dict(db.execute("SELECT id, status FROM runs").fetchall())


@pytest.mark.parametrize(
    "stop",
    ["SIGINT to up (kill -INT)", "SIGINT to the terminal's group (Ctrl-C)", "SIGTERM to up"],
)
def test_stopping_up_pauses_the_runs_in_flight(tmp_path: Path, stop: str) -> None:
    """README: the runs in flight pause. Runs was stopped with the engine, which then could not
    write its pauses (CANCELLED), and Ctrl-C reached all three at once from the terminal: the
    runs stayed `running`, to be failed as orphans by the next `up`."""
    environment = up_environment()
    with nyxflow_up(tmp_path, environment=environment) as up:
        wait_until_up(tmp_path, up)
        run_ids = asyncio.run(_runs_under_way(environment["NYXFLOW_GATEWAY_PORT"], 3))
        if "group" in stop:
            os.killpg(up.pid, signal.SIGINT)
        else:
            up.send_signal(signal.SIGTERM if "SIGTERM" in stop else signal.SIGINT)
        assert up.wait(60) == 0, log_of(tmp_path)[-3000:]
    statuses = _statuses(tmp_path)
    assert {statuses[run_id] for run_id in run_ids} == {"paused"}, statuses


def test_kill_9_of_up_stops_its_services_and_pauses_the_runs_in_flight(tmp_path: Path) -> None:
    """`up` killed by SIGKILL (the OOM killer, a crashed terminal multiplexer): its services
    lived on, re-parented to init, holding the ports and the SQLite file. They stop now as `up`
    would have stopped them, runs after the engine has paused its runs."""
    environment = up_environment()
    with nyxflow_up(tmp_path, environment=environment) as up:
        wait_until_up(tmp_path, up)
        services = children_of(up.pid)
        assert len(services) == 3
        try:
            run_ids = asyncio.run(_runs_under_way(environment["NYXFLOW_GATEWAY_PORT"], 2))
            up.kill()
            up.wait()
            assert _wait_gone(services, 30) == [], log_of(tmp_path)[-3000:]
        finally:  # orphans now, out of the cleanup's reach
            for pid in services:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    statuses = _statuses(tmp_path)
    assert {statuses[run_id] for run_id in run_ids} == {"paused"}, statuses


def test_a_second_up_on_ports_in_use_is_refused_before_it_starts_anything(
    tmp_path: Path,
) -> None:
    """The second `up`'s readiness checks were answered by the first one's services: it said
    "nyxflow is up" with an admin key nothing accepted, then died of Address already in use."""
    environment = up_environment()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with nyxflow_up(first, environment=environment) as up:
        wait_until_up(first, up)
        with nyxflow_up(second, environment=environment) as again:
            assert again.wait(30) == 1
            assert children_of(again.pid) == []
        runs = environment["NYXFLOW_RUNS_LISTEN"]
        assert log_of(second).splitlines() == [
            f"error: {runs} is in use (another `nyxflow up`?); stop it, or move this one with "
            "NYXFLOW_RUNS_LISTEN (and NYXFLOW_RUNS_ADDR)"
        ]
        assert not (second / ".nyxflow").exists()  # nothing started: no database made
        assert up.poll() is None


@pytest.mark.parametrize("taken", ["engine", "gateway"])
def test_each_port_in_use_is_named_with_the_setting_that_moves_it(
    tmp_path: Path, taken: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # held from the start: no other process can take it
        holder.listen()
        port = holder.getsockname()[1]
        if taken == "gateway":
            environment = up_environment(NYXFLOW_GATEWAY_PORT=str(port))
            setting = "NYXFLOW_GATEWAY_PORT"
        else:
            address = f"127.0.0.1:{port}"
            environment = up_environment(NYXFLOW_ENGINE_LISTEN=address, NYXFLOW_ENGINE_ADDR=address)
            setting = "NYXFLOW_ENGINE_LISTEN"
        with nyxflow_up(tmp_path, environment=environment) as up:
            assert up.wait(30) == 1, log_of(tmp_path)[-3000:]
    log = log_of(tmp_path)
    assert f"error: 127.0.0.1:{port} is in use" in log, log[-3000:]
    assert setting in log
    assert "nyxflow is up" not in log
