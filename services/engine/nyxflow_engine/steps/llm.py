"""`llm` and `synthesis`: one prompt over earlier outputs, N alternatives kept."""

from __future__ import annotations

from nyxflow_engine.steps.context import StepContext, StepResult
from nyxflow_engine.templating import prompt_of


async def run_llm(ctx: StepContext) -> StepResult:
    return await ctx.complete_alternatives(prompt_of(ctx.step, ctx.outputs))
