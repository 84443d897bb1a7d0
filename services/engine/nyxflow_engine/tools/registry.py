"""Tool name → async function(call) → output text. Tools are deterministic: no model."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow.repos import readable_folder
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.commands import GIT, run
from nyxflow_engine.tools.sandbox import SANDBOXED, Sandbox

SaveArtifacts = Callable[[Sequence[pb.Artifact], Sequence[pb.Finding]], Awaitable[None]]


@dataclass(frozen=True)
class ToolCall:
    params: dict[str, Any]
    prompt: str  # rendered: earlier outputs are in it
    save: SaveArtifacts  # stores artifacts and findings with the run, before the step completes
    tenant_id: str = ""
    repos_root: str | None = None  # NYXFLOW_REPOS_ROOT: see nyxflow/repos.py
    sandbox: Sandbox = SANDBOXED  # where the tenant's commands run (NYXFLOW_COMMAND_SANDBOX)

    async def repository(self) -> Path:
        """`params.path`: the top folder of a git work tree the run's tenant may read. A folder
        inside one is refused, naming the top: the review applies patches to a clone of the
        whole repository, so the scan must show the files as the patches will name them."""
        raw = self.params.get("path")
        if not isinstance(raw, str) or not raw:
            raise InvalidArgument("the repository's local path is required", field="params.path")
        folder = await asyncio.to_thread(
            readable_folder, raw, self.repos_root, self.tenant_id, "params.path"
        )
        found = await run(folder, *GIT, "rev-parse", "--show-toplevel", merge_stderr=False)
        top = found.output.strip()
        if found.code != 0 or not top:
            # git's reason: "dubious ownership … safe.directory" asks the operator for a setting.
            why = found.errors.strip()
            message = f"{folder} is not a git work tree" + (f": {why}" if why else "")
            raise InvalidArgument(message, field="params.path")
        if not await asyncio.to_thread(os.path.samefile, top, folder):
            raise InvalidArgument(
                f"{folder} is inside the repository {top}: give its top folder",
                field="params.path",
            )
        return folder


Tool = Callable[[ToolCall], Awaitable[str]]


async def echo(call: ToolCall) -> str:
    return call.prompt


def tools() -> dict[str, Tool]:
    # Imported here: the pipeline tools pull in git plumbing that plain workflows never need.
    from nyxflow_engine.tools.findings import collect_findings
    from nyxflow_engine.tools.patches import review_patches
    from nyxflow_engine.tools.repository import scan_repository

    return {
        "echo": echo,
        "scan_repository": scan_repository,
        "collect_findings": collect_findings,
        "review_patches": review_patches,
    }


def tool_for(name: str) -> Tool:
    known = tools()
    tool = known.get(name)
    if tool is None:
        raise InvalidArgument(f"unknown tool {name!r} (one of {', '.join(known)})", field="tool")
    return tool
