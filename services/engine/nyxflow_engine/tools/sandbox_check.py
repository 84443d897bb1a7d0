"""At start-up, the sandbox asked for is tried once, walls included (a tmpfs over the temp
folder, read-only and writable binds, as a review's test command gets them): an engine that
cannot build it refuses to start, naming the setting. It never runs tenants' commands without
it instead: a sandbox that quietly turned itself off would be worse than none, since it would
be counted on. An engine that could build the namespaces but not the walls started, then
rejected every diff of every review."""

from __future__ import annotations

import tempfile
from pathlib import Path

from nyxflow.errors import InvalidArgument
from nyxflow_engine.tools import scratch
from nyxflow_engine.tools.commands import run
from nyxflow_engine.tools.sandbox import Sandbox, Walls

SETTING = "NYXFLOW_COMMAND_SANDBOX"
TRY_S = 30.0


async def refuse_a_broken_sandbox(sandbox: Sandbox) -> None:
    if not sandbox.namespaces:
        return
    with tempfile.TemporaryDirectory(prefix="nyxflow-sandbox-check-", dir=scratch.root()) as folder:
        tried_in = Path(folder)
        clone, home = tried_in / "clone", tried_in / "home"
        (clone / ".git").mkdir(parents=True)
        home.mkdir()
        walls = Walls(tried_in.parent, (clone, home), (clone / ".git",))
        tried = await run(
            clone, "true", timeout_s=TRY_S, contained=True, sandbox=sandbox, walls=walls
        )
    if tried.code != 0:
        why = " ".join(tried.output.split()) or f"exit {tried.code}"
        raise InvalidArgument(
            f"cannot sandbox tenants' commands here ({why}): the engine's user must be able to "
            "create user namespaces (a container's seccomp profile and masked /proc must allow "
            f"it), with unshare (util-linux) on PATH; or set {SETTING}=none to run them "
            "unsandboxed, beside the engine",
            field=SETTING,
        )
