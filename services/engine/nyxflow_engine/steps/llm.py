"""`llm` (and the kinds that are one prompt to one model): render, stream, return."""

from __future__ import annotations

from nyxflow_engine.providers.base import Completion, CompletionRequest
from nyxflow_engine.steps.context import StepContext
from nyxflow_engine.templating import render


async def run_llm(ctx: StepContext) -> Completion:
    step = ctx.step
    provider = ctx.providers.get(step.provider)
    request = CompletionRequest(
        prompt=render(step.prompt, ctx.outputs),
        model=step.model,
        max_tokens=step.max_tokens,
        params=ctx.params,
    )
    completion = await provider.complete(request, ctx.deltas.add)
    await ctx.deltas.flush()
    return completion
