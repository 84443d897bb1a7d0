"""Runs the three services as child processes, watches them, stops them one by one."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import socket
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
from pydantic import Field

from nyxflow.cli.connection import load_settings
from nyxflow.errors import FailedPrecondition
from nyxflow.settings import CommonSettings

SERVICES = ("runs", "engine", "gateway")
STOP_GRACE_S = 15.0  # runs; the gateway's uvicorn takes at most 5 s
GATEWAY_STOP_S = 10.0
# past the engine's own NYXFLOW_SHUTDOWN_GRACE_S: its exit after the drain
ENGINE_STOP_MARGIN_S = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # kill, systemd, docker stop; a closed terminal
# One NYXFLOW_METRICS_PORT for the suite: each service that serves metrics on a port of its own
# (the gateway's are on its HTTP port) takes the next one, or the two would fight for it.
METRICS_PORT_OFFSET = {"runs": 0, "engine": 1}


class ServiceExited(Exception):
    """A service ended while `up` waited for it to be ready."""


class StopSignal(Exception):
    """SIGTERM or SIGHUP: stop the services as Ctrl-C does."""


def catch_stop_signals() -> None:
    """From here on SIGTERM, SIGHUP and SIGINT raise in the main thread (`raise_stop_signal`)."""
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(sig, raise_stop_signal)


def ignore_stop_signals() -> None:
    """For the rest of `up`'s life: once it stops, no signal may cut the stop short."""
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def raise_stop_signal(signum: int, _frame: FrameType | None) -> None:
    """By default SIGTERM and SIGHUP end `up` at once, leaving its services running; raised
    instead, they stop them as Ctrl-C does. Once only: a second signal while `up` began to
    stop (systemd's SIGHUP after its SIGTERM) was raised out of the stop, a traceback."""
    ignore_stop_signals()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise StopSignal(signal.Signals(signum).name)


def exit_status(code: int) -> str:
    """A Popen returncode in words: 1 → "exit code 1", -9 → "killed by SIGKILL"."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-code}"


class ServiceSettings(CommonSettings):
    """What `up` must know of its services' own settings (their defaults are the services')."""

    runs_listen: str = "127.0.0.1:50051"
    engine_listen: str = "127.0.0.1:50052"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    shutdown_grace_s: float = Field(default=10.0, ge=0)


def in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port already. A readiness check would take its answer
    for the service's own: a second `up` said "nyxflow is up" on the first one's services."""
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return False  # the service says why in its own words
    several = len(found) > 1
    for family, kind, proto, _, address in found:
        # Any other failure (an IPv6 address on a host without IPv6) is not "in use": the
        # service binds what it can, and says why in its own words if that is nothing.
        with contextlib.suppress(OSError), socket.socket(family, kind, proto) as sock:
            # as the services bind: a port left in TIME_WAIT by the last `up` is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and several:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
    return False


def listen_address(listen: str) -> tuple[str, int] | None:
    """A gRPC bind address as host and port; None for one not checked here (unix:, port 0)."""
    host, colon, port = listen.rpartition(":")
    if not colon or not port.isdigit() or int(port) == 0 or host.startswith("unix"):
        return None
    return host.strip("[]"), int(port)


@dataclass
class Supervisor:
    env: Mapping[str, str]
    metrics_port: int = 0
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    settings: ServiceSettings = field(default_factory=lambda: load_settings(ServiceSettings))

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
        # SIGTERM to the whole unit at once (systemd's KillMode=control-group): runs serves on
        # until the engine, pausing its runs through it, is gone (a unix: address: not watched)
        if name == "runs" and listen_address(self.settings.engine_addr) is not None:
            env["NYXFLOW_STOP_AFTER"] = self.settings.engine_addr
            env["NYXFLOW_STOP_AFTER_WITHIN_S"] = str(self.stop_grace_s("engine"))
        return env

    def addresses(self) -> list[tuple[str, int, str]]:
        """Where the services will listen: host, port and the settings that move it."""
        found = []
        for listen, moved_by in (
            (self.settings.runs_listen, "NYXFLOW_RUNS_LISTEN (and NYXFLOW_RUNS_ADDR)"),
            (self.settings.engine_listen, "NYXFLOW_ENGINE_LISTEN (and NYXFLOW_ENGINE_ADDR)"),
        ):
            if (address := listen_address(listen)) is not None:
                found.append((*address, moved_by))
        if self.settings.gateway_port:
            found.append(
                (self.settings.gateway_host, self.settings.gateway_port, "NYXFLOW_GATEWAY_PORT")
            )
        if self.metrics_port:
            for name, offset in METRICS_PORT_OFFSET.items():
                port = self.metrics_port + offset
                found.append((self.settings.metrics_host, port, f"NYXFLOW_METRICS_PORT ({name})"))
        return found

    def check_addresses_free(self) -> None:
        """Before anything starts: a port in use is refused in one line naming it."""
        for host, port, moved_by in self.addresses():
            if in_use(host, port):
                shown = f"[{host}]" if ":" in host else host
                raise FailedPrecondition(
                    f"{shown}:{port} is in use (another `nyxflow up`?); stop it, or move "
                    f"this one with {moved_by}"
                )

    def start(self, name: str) -> None:
        if not self.children:
            self.check_addresses_free()
        watch = ["--parent", str(os.getpid()), "--kill-after", str(self.stop_grace_s(name))]
        if name == "runs":
            # killed with `up`, runs outlives the engine as `up` would have it: the engine
            # pauses its runs through runs
            watch += ["--after", self.settings.engine_addr]
            watch += ["--within", str(self.stop_grace_s("engine"))]
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", "nyxflow.cli.child", *watch, f"nyxflow_{name}"],
            env=self.env_of(name),
            # a group of its own: the terminal's Ctrl-C reaches `up` alone, which stops the
            # services one by one; the engine, stopped at once with runs, lost its pauses
            process_group=0,
        )

    def stop_grace_s(self, name: str) -> float:
        """How long `name` is given after SIGTERM before SIGKILL."""
        if name == "engine":
            return self.settings.shutdown_grace_s + ENGINE_STOP_MARGIN_S
        return GATEWAY_STOP_S if name == "gateway" else STOP_GRACE_S

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

    def how_ended(self, names: list[str]) -> str:
        """In words, e.g. "engine exited (killed by SIGKILL)": the OOM killer's work was read as
        an exit of the service's own."""
        return ", ".join(
            f"{name} exited ({exit_status(self.children[name].returncode)})" for name in names
        )

    def stop(self) -> None:
        """One by one in reverse order, each waited for: the gateway (it holds the browsers),
        the engine (it pauses its runs in flight, writing through runs), then runs."""
        with ignoring_sigint():  # a second Ctrl-C must not cut the engine's pauses short
            for name in reversed(SERVICES):
                child = self.children.get(name)
                if child is None:
                    continue
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
                try:
                    child.wait(self.stop_grace_s(name))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


@contextmanager
def ignoring_sigint() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no handler of ours to swap
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
                    check()  # SERVING from a service that has since exited is not ours
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
                    check()
                    return
        except OSError:
            pass
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout_s}s")
        time.sleep(0.1)
