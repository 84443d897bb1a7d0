"""Infrastructure a test owns and may break: its own PostgreSQL cluster, its own redis-server,
and a process stack on them. The shared servers are never touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from nyxflow_runs.bus import IDLE_CHANNEL
from tests.support.databases import unavailable
from tests.support.ports import free_port
from tests.support.processes import ProcessStack

PG_BIN = Path(os.environ.get("NYXFLOW_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass
class OwnPostgres:
    data: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        command = [*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.data / "db"), *args]
        # No pipes: the postmaster pg_ctl spawns would hold them open, and run() would wait.
        subprocess.run(
            command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.ctl("-l", str(self.data / "postgres.log"), "-o", options, "-w", "start")

    def restart_fast(self) -> None:
        # The options given at start are kept in postmaster.opts.
        self.ctl("-l", str(self.data / "postgres.log"), "-m", "fast", "-w", "restart")


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A throwaway cluster (trust auth, loopback, a free port), removed afterwards."""
    if not (PG_BIN / "initdb").exists():
        unavailable("PostgreSQL (initdb)", FileNotFoundError(PG_BIN / "initdb"))
    # initdb refuses root: run the cluster as `postgres`, in a directory it owns.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="nyxflow-faults-pg-"))
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    cluster = OwnPostgres(data, free_port(), as_user)
    try:
        init = [*as_user, str(PG_BIN / "initdb"), "-D", str(data / "db"), "-A", "trust"]
        subprocess.run([*init, "-U", "postgres"], check=True, capture_output=True, timeout=120)
        cluster.start()
    except (OSError, subprocess.SubprocessError) as error:
        shutil.rmtree(data, ignore_errors=True)
        unavailable("PostgreSQL (own cluster)", error)
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            cluster.ctl("-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


@dataclass
class OwnRedis:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return
            except (redis.RedisError, OSError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def bus_readers(self) -> int:
        """Runs replicas whose bus reader is connected (each holds the idle channel)."""
        return int(dict(self.client().pubsub_numsub(IDLE_CHANNEL))[IDLE_CHANNEL.encode()])


@contextlib.contextmanager
def own_redis() -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        unavailable("Redis (redis-server)", FileNotFoundError("redis-server"))
    server = OwnRedis(free_port())
    try:
        server.start()
    except (OSError, redis.RedisError) as error:
        server.stop()
        unavailable("Redis (own server)", error)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def stack_on(
    database_url: str, logs: Path, redis_url: str | None, replicas: dict[str, dict[str, str]]
) -> Iterator[ProcessStack]:
    """The services on a database the test owns: runs, every runs replica, engine, gateway.
    `replicas` maps a name to its env; its service is its name without trailing digits."""
    stack = ProcessStack(database_url=database_url, logs=logs, redis_url=redis_url)
    for name, env in replicas.items():
        stack.add_replica(name, name.rstrip("0123456789"), **env)
    order = {"runs": 0, "engine": 1, "gateway": 2}
    names = sorted(
        {"runs", "engine", "gateway", *replicas}, key=lambda n: order[n.rstrip("0123456789")]
    )
    try:
        for name in names:
            stack.start(name)
        yield stack
    finally:
        stack.stop_all()
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                errors = [ln for ln in stack.log_text(name).splitlines() if '"error"' in ln]
                if errors:
                    print(f"--- {name} errors ---", *errors[-20:], sep="\n")
