"""Tool name → async function(params, rendered prompt) → output text."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow_engine.tools.repository import scan_repository

Tool = Callable[[dict[str, Any], str], Awaitable[str]]


async def echo(params: dict[str, Any], prompt: str) -> str:
    return prompt


TOOLS: dict[str, Tool] = {"echo": echo, "scan_repository": scan_repository}


def tool_for(name: str) -> Tool:
    tool = TOOLS.get(name)
    if tool is None:
        raise InvalidArgument(f"unknown tool {name!r} (one of {', '.join(TOOLS)})", field="tool")
    return tool
