"""`tool`: a deterministic function from the registry; no model involved."""

from __future__ import annotations

from collections.abc import Sequence

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.steps.context import StepContext, StepResult
from nyxflow_engine.templating import render
from nyxflow_engine.tools.registry import ToolCall, tool_for


async def run_tool(ctx: StepContext) -> StepResult:
    name = ctx.spec.tool
    step_id = ctx.step.id

    async def save(artifacts: Sequence[pb.Artifact], findings: Sequence[pb.Finding]) -> None:
        await ctx.writer.save_artifacts(step_id, artifacts, findings)

    call = ToolCall(
        ctx.params,
        render(ctx.step.prompt, ctx.outputs),
        save,
        ctx.tenant_id,
        ctx.repos_root,
        ctx.sandbox,
        later=_after(ctx.steps, step_id),
    )
    output = await tool_for(name)(call)
    return StepResult(output=output, served_by=f"tool:{name}")


def _after(steps: Sequence[pb.Step], step_id: str) -> Sequence[pb.Step]:
    ids = [s.id for s in steps]
    return steps[ids.index(step_id) + 1 :] if step_id in ids else ()
