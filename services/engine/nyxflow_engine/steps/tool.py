"""`tool`: a deterministic function from the registry; no model involved."""

from __future__ import annotations

from nyxflow_engine.steps.context import StepContext, StepResult
from nyxflow_engine.templating import render
from nyxflow_engine.tools.registry import tool_for


async def run_tool(ctx: StepContext) -> StepResult:
    name = ctx.spec.tool
    output = await tool_for(name)(ctx.params, render(ctx.step.prompt, ctx.outputs))
    return StepResult(output=output, served_by=f"tool:{name}")
