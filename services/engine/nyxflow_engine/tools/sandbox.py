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
of it. The file system is not hidden: the command reads and writes what the engine's user
can, as a CI job does.
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


@dataclass(frozen=True)
class Sandbox:
    namespaces: bool = True  # false: beside the engine (NYXFLOW_COMMAND_SANDBOX=none)
    network: bool = False  # with namespaces: the host's network, not a loopback of its own

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> Sandbox:
        return cls(settings.command_sandbox == "namespaces", settings.command_network)

    def command(self, engine: int, args: Sequence[str]) -> tuple[str, ...]:
        """The command line that runs `args` under the keeper, in this sandbox; `engine` is
        the descriptor the keeper watches the engine by (commands.py)."""
        keeper = (sys.executable, "-I", "-S", str(REAPER))
        if not self.namespaces:
            return (*keeper, str(engine), *args)
        network = () if self.network else ("--net",)
        return (*UNSHARE, *network, "--", *keeper, "--sandboxed", str(engine), *args)


SANDBOXED = Sandbox()  # namespaces, no network: as the engine's settings have it by default
