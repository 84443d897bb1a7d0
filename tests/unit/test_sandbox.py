"""A tenant's command in the sandbox (tools/sandbox.py): it cannot see the engine's processes
nor read their secrets, and it cannot reach the host's network, yet has a loopback of its own.
Each is run with the sandbox off too: the same command then can, so the sandbox is what stops
it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from nyxflow_engine.tools.commands import run
from nyxflow_engine.tools.sandbox import Sandbox

SANDBOXED, HOST_NETWORK, UNSANDBOXED = Sandbox(), Sandbox(network=True), Sandbox(namespaces=False)
SECRET = "planted-engine-secret"

# The tenant's command, given the engine's pid: what it reads of the engine, what it sees.
READER = """
import os, sys
try:
    print(open(f"/proc/{sys.argv[1]}/environ", "rb").read().decode(errors="replace"))
except OSError as error:
    print("cannot read it:", error.strerror)
print("visible:", *sorted(int(name) for name in os.listdir("/proc") if name.isdigit()))
"""

# A stand-in engine, the secret in its environment from its start (as the internal secret and
# the providers' keys are in a real engine's /proc/<pid>/environ): it runs the reader.
ENGINE = """
import asyncio, json, os, sys
from pathlib import Path
from nyxflow_engine.tools.commands import run
from nyxflow_engine.tools.sandbox import Sandbox

async def main() -> None:
    sandbox = Sandbox(namespaces=sys.argv[2] == "namespaces")
    reader = (sys.executable, "-c", sys.argv[3], str(os.getpid()))
    done = await run(Path(sys.argv[1]), *reader, contained=True, sandbox=sandbox)
    print(json.dumps({"engine": os.getpid(), "code": done.code, "output": done.output}))

asyncio.run(main())
"""


async def _read_by_a_command_of(tmp_path: Path, sandbox: str) -> dict[str, object]:
    engine = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ENGINE,
        str(tmp_path),
        sandbox,
        READER,
        env={**os.environ, "NYXFLOW_INTERNAL_SECRET": SECRET},
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(engine.communicate(), 60)
    assert engine.returncode == 0
    seen: dict[str, object] = json.loads(stdout)
    return seen


async def test_a_sandboxed_command_sees_no_engine_process_nor_its_secrets(
    tmp_path: Path,
) -> None:
    seen = await _read_by_a_command_of(tmp_path, "namespaces")

    output = str(seen["output"])
    assert seen["code"] == 0, output
    assert SECRET not in output
    assert "cannot read it: No such file or directory" in output
    # Its keeper (the namespace's init) and itself, nothing else.
    assert output.splitlines()[-1] == "visible: 1 2", output


async def test_an_unsandboxed_command_reads_the_engine_s_secrets(tmp_path: Path) -> None:
    seen = await _read_by_a_command_of(tmp_path, "none")

    output = str(seen["output"])
    assert seen["code"] == 0, output
    assert f"NYXFLOW_INTERNAL_SECRET={SECRET}" in output
    assert str(seen["engine"]) in output.splitlines()[-1].split()


CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5)"


@pytest.mark.parametrize(
    ("sandbox", "reached"),
    [(SANDBOXED, False), (HOST_NETWORK, True), (UNSANDBOXED, True)],
    ids=["sandboxed", "host-network", "unsandboxed"],
)
async def test_a_sandboxed_command_cannot_reach_the_host_s_network(
    tmp_path: Path, sandbox: Sandbox, reached: bool
) -> None:
    """A port the engine's host listens on (runs, PostgreSQL) on its own loopback."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = str(listening.getsockname()[1])

        done = await run(
            tmp_path, sys.executable, "-c", CONNECT, port, contained=True, sandbox=sandbox
        )

    assert (done.code == 0) is reached, done.output
    if not reached:
        assert "ConnectionRefusedError" in done.output


async def test_a_sandboxed_command_has_a_loopback_of_its_own(tmp_path: Path) -> None:
    """A test suite that serves on 127.0.0.1 and connects to itself still passes."""
    script = (
        "import socket; server = socket.create_server(('127.0.0.1', 0)); "
        "socket.create_connection(server.getsockname(), 5); print('served')"
    )
    done = await run(tmp_path, sys.executable, "-c", script, contained=True)
    assert (done.code, done.output.strip()) == (0, "served")


async def test_a_sandboxed_command_holds_no_capability(tmp_path: Path) -> None:
    """It could otherwise undo its sandbox: unmount its /proc, take its loopback down."""
    done = await run(tmp_path, "cat", "/proc/self/status", contained=True)

    status = dict(line.split(":\t", 1) for line in done.output.splitlines() if ":\t" in line)
    for held in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[held], 16) == 0, (held, status[held])
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Uid"].split()[0] == str(os.getuid())  # still the engine's user


ALLOCATE = "bytearray(512 << 20); print('allocated')"  # 512 MiB, written (zeroed) at once
WRITE = "head -c 2097152 /dev/zero > big && echo wrote"  # 2 MiB


@pytest.mark.parametrize("namespaces", [True, False], ids=["sandboxed", "unsandboxed"])
async def test_a_command_that_takes_too_much_memory_fails_alone(
    tmp_path: Path, namespaces: bool
) -> None:
    """A leaking suite ran until the host's OOM killer chose a victim: the engine, maybe."""
    limited = Sandbox(namespaces=namespaces, memory_mb=256)
    unlimited = Sandbox(namespaces=namespaces, memory_mb=0)
    python = (sys.executable, "-c", ALLOCATE)

    refused = await run(tmp_path, *python, contained=True, sandbox=limited)
    allowed = await run(tmp_path, *python, contained=True, sandbox=unlimited)

    assert refused.code != 0 and "MemoryError" in refused.output, refused.output
    assert (allowed.code, allowed.output.strip()) == (0, "allocated")


@pytest.mark.parametrize("namespaces", [True, False], ids=["sandboxed", "unsandboxed"])
async def test_a_command_cannot_write_a_file_past_its_limit(
    tmp_path: Path, namespaces: bool
) -> None:
    """Disk filled by one suite's runaway log fails every run on the host."""
    sandbox = Sandbox(namespaces=namespaces, file_mb=1)

    done = await run(tmp_path, "sh", "-c", WRITE, contained=True, sandbox=sandbox)

    assert done.code != 0 and "File too large" in done.output, done.output
    assert (tmp_path / "big").stat().st_size == 1 << 20


async def test_a_command_writes_no_core_dump_and_cannot_raise_its_limits(tmp_path: Path) -> None:
    script = "ulimit -c; ulimit -d; ulimit -S -d unlimited 2>/dev/null || echo refused"

    done = await run(tmp_path, "sh", "-c", script, contained=True, sandbox=Sandbox(memory_mb=64))

    assert done.output.split() == ["0", str(64 * 1024), "refused"], done.output
