"""CPU time of the processes a measure runs on, from /proc: where a step's cost goes."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def postgres_cpu_s() -> dict[int, float]:
    """CPU seconds of every live PostgreSQL process, by pid."""
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().startswith("postgres"):
                seconds[int(entry.name)] = process_cpu_s(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return seconds


class CpuMeter:
    """CPU seconds per process (the services, this process, PostgreSQL) between start and
    stop. PostgreSQL's is summed by backend: one that exits during the measure (the floor's
    connections, closing as the measure starts) is left out rather than subtracted, and one
    that starts during it counts whole."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._start: dict[str, float] = {}
        self._postgres: dict[int, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: process_cpu_s(pid) for name, pid in self._pids.items()}
        now["bench client"] = time.process_time()
        return now

    def start(self) -> None:
        self._start = self._now()
        self._postgres = postgres_cpu_s()

    def stop(self) -> dict[str, float]:
        end = self._now()
        spent = {name: end[name] - self._start[name] for name in end}
        spent["postgresql"] = sum(
            _since(self._postgres.get(pid, 0.0), seconds)
            for pid, seconds in postgres_cpu_s().items()
        )
        return spent


def _since(started: float, now: float) -> float:
    """A process's CPU seconds since `started`; all of them if its pid is a new process's."""
    return now - started if now >= started else now
