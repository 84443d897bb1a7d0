"""Tool name → async function(call) → output text. Tools are deterministic: no model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb

SaveArtifacts = Callable[[Sequence[pb.Artifact], Sequence[pb.Finding]], Awaitable[None]]


@dataclass(frozen=True)
class ToolCall:
    params: dict[str, Any]
    prompt: str  # rendered: earlier outputs are in it
    save: SaveArtifacts  # stores artifacts and findings with the run, before the step completes


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
