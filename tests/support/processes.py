"""The three services as real processes on loopback, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nyxflow.cli.supervisor import wait_grpc_serving, wait_http_ok
from tests.support.databases import fresh_database
from tests.support.inprocess import ADMIN_KEY, API_KEY, SECRET
from tests.support.ports import free_port

# Short leases so orphan tests finish in seconds: TTL 2 s, heartbeat 0.5 s, sweep 0.5 s.
LEASE_TTL_S = 2.0
SERVICES = ("runs", "engine", "gateway")


@dataclass
class ProcessStack:
    database_url: str
    logs: Path
    redis_url: str | None = None
    runs_port: int = field(default_factory=free_port)
    engine_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Extra processes (a second engine or runs replica) or per-process env overrides, by the
    # name they are started, signalled and restarted under: name -> (service, extra env).
    replicas: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    @property
    def runs_addr(self) -> str:
        return f"127.0.0.1:{self.runs_port}"

    @property
    def engine_addr(self) -> str:
        return f"127.0.0.1:{self.engine_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NYXFLOW_")}
        env.update(
            NYXFLOW_DATABASE_URL=self.database_url,
            NYXFLOW_API_KEY=API_KEY,
            NYXFLOW_ADMIN_KEY=ADMIN_KEY,
            NYXFLOW_MIGRATE_ON_START="true",
            NYXFLOW_INTERNAL_SECRET=SECRET,
            NYXFLOW_RUNS_ADDR=self.runs_addr,
            NYXFLOW_RUNS_LISTEN=self.runs_addr,
            NYXFLOW_ENGINE_ADDR=self.engine_addr,
            NYXFLOW_ENGINE_LISTEN=self.engine_addr,
            NYXFLOW_GATEWAY_HOST="127.0.0.1",
            NYXFLOW_GATEWAY_PORT=str(self.gateway_port),
            NYXFLOW_LEASE_TTL_S=str(LEASE_TTL_S),
            NYXFLOW_HEARTBEAT_S="0.5",
            NYXFLOW_SWEEP_INTERVAL_S="0.5",
            NYXFLOW_WATCH_POLL_S="0.5",
            NYXFLOW_SHUTDOWN_GRACE_S="5",
            NYXFLOW_ADOPT_INTERVAL_S="0.2",
            NYXFLOW_LOG_LEVEL="INFO",
        )
        if self.redis_url:
            env["NYXFLOW_REDIS_URL"] = self.redis_url
        return env

    def add_replica(self, name: str, service: str, **env: str) -> None:
        """Declare process `name` running `service` with `env` on top of the stack's (e.g. a
        second engine: NYXFLOW_ENGINE_LISTEN=…); then start/kill/signal/restart it by name."""
        self.replicas[name] = (service, dict(env))

    def start(self, name: str) -> None:
        service, extra = self.replicas.get(name, (name, {}))
        env = {**self.env(), **extra}
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"nyxflow_{service}"], env=env, stdout=log, stderr=log
        )
        if service == "gateway":
            wait_http_ok(f"http://127.0.0.1:{env['NYXFLOW_GATEWAY_PORT']}/healthz", 30)
        elif service == "runs":
            wait_grpc_serving(env["NYXFLOW_RUNS_LISTEN"], 30)
        else:
            wait_grpc_serving(env["NYXFLOW_ENGINE_LISTEN"], 30)

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(10)

    def restart(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        self.start(name)

    def stop_all(self) -> None:
        # Gateways first, runs last, replicas with their service.
        order = {"gateway": 0, "engine": 1, "runs": 2}
        names = sorted(self.procs, key=lambda n: order[self.replicas.get(n, (n, {}))[0]])
        for name in names:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@contextlib.contextmanager
def running_stack(
    backend: str, tmp: Path, redis_url: str | None, env: dict[str, str] | None = None
) -> Iterator[ProcessStack]:
    """A fresh database on `backend` and the three services on it, for a whole test module
    (sync, because module fixtures outlive any one test's event loop)."""
    database = fresh_database(backend, tmp)
    loop = asyncio.new_event_loop()
    try:
        url = loop.run_until_complete(database.__aenter__())
        stack = ProcessStack(database_url=url, logs=tmp, redis_url=redis_url)
        for name in SERVICES:
            stack.add_replica(name, name, **(env or {}))  # the same services, extra settings
        try:
            stack.start_all()
            yield stack
        finally:
            stack.stop_all()
            for name in SERVICES:
                with contextlib.suppress(FileNotFoundError):
                    errors = [ln for ln in stack.log_text(name).splitlines() if '"error"' in ln]
                    if errors:
                        print(f"--- {name} errors ---", *errors[-20:], sep="\n")
        loop.run_until_complete(database.__aexit__(None, None, None))
    finally:
        loop.close()
