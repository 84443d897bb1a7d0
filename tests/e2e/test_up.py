"""`nyxflow up` as a real process: whatever stops it stops its services, a service that exits
while starting is reported at once, and runs and the engine get a metrics port each."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port

UP_LINE = "Ctrl-C stops all three."


@contextlib.contextmanager
def nyxflow_up(tmp_path: Path, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`nyxflow up --no-demo` on free ports, its stderr (the services' too) in up.log."""
    runs, engine = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NYXFLOW_")}
    environment.update(
        NYXFLOW_RUNS_LISTEN=runs,
        NYXFLOW_RUNS_ADDR=runs,
        NYXFLOW_ENGINE_LISTEN=engine,
        NYXFLOW_ENGINE_ADDR=engine,
        NYXFLOW_GATEWAY_PORT=str(free_port()),
        **env,
    )
    command = [sys.executable, "-m", "nyxflow.cli.main", "up", "--no-demo", *args]
    with (tmp_path / "up.log").open("wb") as log:
        # a session of its own: the cleanup below reaches every process it started
        up = subprocess.Popen(
            command, cwd=tmp_path, env=environment, stdout=log, stderr=log, start_new_session=True
        )
    try:
        yield up
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)  # Ctrl-C, which stopped them before any fix
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(30)
        # whatever `up` did or did not stop: nothing started here outlives the test
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
