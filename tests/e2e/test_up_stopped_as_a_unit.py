"""`nyxflow up` under a service manager: SIGTERM to `up` and its three services at once (systemd's
default KillMode=control-group) pauses the runs in flight, and a service killed on its own
(the OOM killer) is reported with how it died."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from tests.e2e.test_up import (
    _runs_under_way,
    _statuses,
    _wait_gone,
    children_of,
    log_of,
    nyxflow_up,
    up_environment,
    wait_until_up,
)


def test_sigterm_to_up_and_its_services_at_once_pauses_the_runs_in_flight(
    tmp_path: Path,
) -> None:
    """Runs began its own drain on its SIGTERM while the engine still wrote its pauses through
    it (CANCELLED): the runs stayed `running`, to be failed as orphans by the next `up`."""
    environment = up_environment()
    with nyxflow_up(tmp_path, environment=environment) as up:
        wait_until_up(tmp_path, up)
        services = children_of(up.pid)
        assert len(services) == 3
        run_ids = asyncio.run(_runs_under_way(environment["NYXFLOW_GATEWAY_PORT"], 2))
        for pid in [up.pid, *services]:
            os.kill(pid, signal.SIGTERM)
        assert up.wait(60) == 0, log_of(tmp_path)[-3000:]
        assert _wait_gone(services, 30) == []
    statuses = _statuses(tmp_path)
    assert {statuses[run_id] for run_id in run_ids} == {"paused"}, log_of(tmp_path)[-3000:]


def test_a_service_killed_on_its_own_is_reported_with_how_it_died(tmp_path: Path) -> None:
    with nyxflow_up(tmp_path) as up:
        wait_until_up(tmp_path, up)
        services = children_of(up.pid)
        (engine,) = [
            pid
            for pid in services
            if b"nyxflow_engine" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        os.kill(engine, signal.SIGKILL)  # the OOM killer, say
        assert up.wait(60) == 1
        assert _wait_gone(services, 30) == []
    log = log_of(tmp_path)
    assert "engine exited (killed by SIGKILL); stopping the others" in log, log[-3000:]
