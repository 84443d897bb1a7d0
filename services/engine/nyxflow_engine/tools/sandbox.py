"""Where a tenant's command runs (`NYXFLOW_COMMAND_SANDBOX`, `NYXFLOW_COMMAND_NETWORK`).

A clean environment keeps the engine's secrets out of the command's own variables, but a
command beside the engine could still read them from /proc/<engine pid>/environ, and reach
the runs service, the database or the internet from the engine's host. In the sandbox,
`unshare` gives the command namespaces of its own:

- user: its user is still the engine's (mapped to itself), but it holds no capability outside,
  so an engine process it found anyway (under a /proc it unmounted) could not be read;
- PID, with its own /proc: no process but its own is visible, and the keeper (`reaper.py`) is
  the namespace's init: when the keeper dies, the kernel kills every process left in it;
- mount (for that /proc) and IPC (the System V and POSIX queues and memory of the host);
- network, unless `network`: nothing but a loopback of its own (the keeper brings it up).

The keeper drops every capability before the command starts, so the command cannot undo any
of it. The file system is the engine's, within `Walls` when given (the review's): a fresh,
empty scratch folder of its own in place of the engine's (other runs' scratch clones are not
there; the rest of the temp folder stays), its clone's work tree and HOME writable, and
read-only its clone's `.git` and the repositories. The engine runs git in that `.git`
afterwards: config, attributes or hooks planted there would run in the engine, unsandboxed.
Elsewhere it reads and writes what the engine's user can, as a CI job does.

Limits hold with or without namespaces (`NYXFLOW_COMMAND_MEMORY_MB`, `..._FILE_MB`): a
tenant's suite that leaks memory, or writes without end, fails on its own instead of taking
the engine's host (and every other run on it) down with it. Memory is RLIMIT_DATA, not
RLIMIT_AS: a JVM or a Go test binary reserves gigabytes of address space it never touches,
and only what is writable counts in RLIMIT_DATA. RLIMIT_NPROC is not one of them: an engine
that runs as root is exempt from it; the PID namespace and the keeper end a fork bomb.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nyxflow_engine.settings import EngineSettings

REAPER = Path(__file__).with_name("reaper.py")
# --kill-child: the keeper dies with unshare (and the namespace with the keeper). --keep-caps:
# a keeper not mapped to root keeps the capabilities it needs to bring the loopback up.
UNSHARE = (
    "unshare",
    "--user",
    "--map-current-user",
    "--keep-caps",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
    "--ipc",
)


MIB = 1 << 20


@dataclass(frozen=True)
class Walls:
    """What a sandboxed command may write (with `NYXFLOW_COMMAND_SANDBOX=none`: everything)."""

    cover: Path  # hidden under an empty tmpfs of the command's own (the scratch folder)
    writable: tuple[Path, ...] = ()  # shown again below `cover`, writable
    read_only: tuple[Path, ...] = ()  # shown read-only, below `cover` or not

    def options(self, size_mb: int) -> tuple[str, ...]:
        """The keeper's `--tmpfs=BYTES:PATH` and `--bind=rw|ro:PATH` options (reaper.py)."""
        binds = [("rw", p) for p in self.writable] + [("ro", p) for p in self.read_only]
        return (
            f"--tmpfs={size_mb * MIB}:{self.cover}",
            *(f"--bind={mode}:{path}" for mode, path in binds),
        )


@dataclass(frozen=True)
class Sandbox:
    namespaces: bool = True  # false: beside the engine (NYXFLOW_COMMAND_SANDBOX=none)
    network: bool = False  # with namespaces: the host's network, not a loopback of its own
    memory_mb: int = 4096  # writable memory per process of the command; 0: no limit
    file_mb: int = 1024  # the largest file it may write (its output included); 0: no limit

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> Sandbox:
        return cls(
            settings.command_sandbox == "namespaces",
            settings.command_network,
            settings.command_memory_mb,
            settings.command_file_mb,
        )

    def command(
        self, engine: int, args: Sequence[str], walls: Walls | None = None
    ) -> tuple[str, ...]:
        """The command line that runs `args` under the keeper, in this sandbox; `engine` is
        the descriptor the keeper watches the engine by (commands.py)."""
        keeper = (sys.executable, "-I", "-S", str(REAPER), *self._limits())
        if not self.namespaces:
            return (*keeper, str(engine), *args)
        network = () if self.network else ("--net",)
        # The scratch tmpfs is memory: it holds no more than one file may (0: half the RAM).
        mounts = walls.options(self.file_mb) if walls else ()
        return (*UNSHARE, *network, "--", *keeper, *mounts, "--sandboxed", str(engine), *args)

    def _limits(self) -> tuple[str, ...]:
        """The keeper's `--limit=NAME:BYTES` options (reaper.py sets them on the command)."""
        limits = {"data": self.memory_mb, "fsize": self.file_mb}
        return tuple(f"--limit={name}:{mb * MIB}" for name, mb in limits.items() if mb > 0)


SANDBOXED = Sandbox()  # namespaces, no network: as the engine's settings have it by default
