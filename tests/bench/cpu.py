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


def postgres_cpu_s() -> float:
    """Every live PostgreSQL process's CPU seconds: the pooled backends serving the services
    live through a measure (connections that close meanwhile are not counted)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().startswith("postgres"):
                total += process_cpu_s(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


class CpuMeter:
    """CPU seconds per process (the services, this process, PostgreSQL) between start and
    stop."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: process_cpu_s(pid) for name, pid in self._pids.items()}
        now["bench client"] = time.process_time()
        now["postgresql"] = postgres_cpu_s()
        return now

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        end = self._now()
        return {name: end[name] - self._start[name] for name in end}
