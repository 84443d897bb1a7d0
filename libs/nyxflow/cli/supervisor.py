"""Runs the three services as child processes, watches them, stops them all together."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = ("runs", "engine", "gateway")
STOP_GRACE_S = 15.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # kill, systemd, docker stop; a closed terminal
# One NYXFLOW_METRICS_PORT for the suite: each service that serves metrics on a port of its own
# (the gateway's are on its HTTP port) takes the next one, or the two would fight for it.
METRICS_PORT_OFFSET = {"runs": 0, "engine": 1}


class ServiceExited(Exception):
    """A service ended while `up` waited for it to be ready."""


class StopSignal(Exception):
    """SIGTERM or SIGHUP: stop the services as Ctrl-C does."""


@contextmanager
def stop_signals(
    handler: Callable[[int, FrameType | None], None] | signal.Handlers,
) -> Iterator[None]:
    """SIGTERM and SIGHUP go to `handler` inside the block."""
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def raise_stop_signal(signum: int, _frame: FrameType | None) -> None:
    """By default SIGTERM and SIGHUP end `up` at once, leaving its services running; raised
    instead, they stop them as Ctrl-C does."""
    raise StopSignal(signal.Signals(signum).name)


def exit_status(code: int) -> str:
    """A Popen returncode in words: 1 → "exit code 1", -9 → "killed by SIGKILL"."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-code}"


@dataclass
class Supervisor:
    env: Mapping[str, str]
    metrics_port: int = 0
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def with_shared_secret(cls, metrics_port: int = 0) -> Supervisor:
        env = dict(os.environ)
        # The services must agree on the internal secret; a fresh one per `up` unless set.
        env.setdefault("NYXFLOW_INTERNAL_SECRET", secrets.token_urlsafe(24))
        env.setdefault("NYXFLOW_ADMIN_KEY", "nyx_admin_" + secrets.token_urlsafe(24))
        # One command for a developer: `up` brings the schema up to date before serving.
        env.setdefault("NYXFLOW_MIGRATE_ON_START", "true")
        return cls(env, metrics_port)

    def env_of(self, name: str) -> dict[str, str]:
        env = dict(self.env)
        if self.metrics_port and name in METRICS_PORT_OFFSET:
            env["NYXFLOW_METRICS_PORT"] = str(self.metrics_port + METRICS_PORT_OFFSET[name])
        return env

    def start(self, name: str) -> None:
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", f"nyxflow_{name}"], env=self.env_of(name)
        )

    def running_check(self, name: str) -> Callable[[], None]:
        """For the waits at start-up: raises ServiceExited once `name` has exited, so that
        `up` does not wait out its whole timeout for a service that is gone."""

        def check() -> None:
            code = self.children[name].poll()
            if code is not None:
                # its stderr is ours: the reason it gave is printed above
                raise ServiceExited(
                    f"{name} exited ({exit_status(code)}) before it was ready; its output is above"
                )

        return check

    def dead(self) -> list[str]:
        return [name for name, p in self.children.items() if p.poll() is not None]

    def stop(self) -> None:
        """SIGTERM in reverse order (gateway first: it holds the browsers), then wait."""
        for name in reversed(SERVICES):
            child = self.children.get(name)
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _no_check() -> None:
    """Waiting for a service no one started (tests): nothing to watch."""


def wait_grpc_serving(
    address: str, timeout_s: float, check: Callable[[], None] = _no_check
) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become SERVING within {timeout_s}s")
            time.sleep(0.1)


def wait_http_ok(url: str, timeout_s: float, check: Callable[[], None] = _no_check) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout_s}s")
        time.sleep(0.1)
