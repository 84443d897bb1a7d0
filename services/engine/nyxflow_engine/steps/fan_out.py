"""`fan_out`: split an earlier output into items and run the prompt per item, a bounded number
at a time. Each item is persisted as its own row the moment it is done, so a crash or a pause
loses nothing and resume runs only the items that are missing."""

from __future__ import annotations

import asyncio

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.splitting import split_items
from nyxflow_engine.steps.context import PauseRequested, StepContext, StepResult
from nyxflow_engine.templating import render
from nyxflow_engine.writer import draft


async def run_fan_out(ctx: StepContext) -> StepResult:
    step, spec = ctx.step, ctx.spec
    items = split_items(ctx.outputs.get(spec.source, ""), spec.split or "headings")
    total = len(items)
    outputs = {i.index: i.output for i in step.items if i.index < total}
    gate = asyncio.Semaphore(max(1, spec.concurrency or 4))
    usage = {"input": 0, "output": 0}
    served_by = ""

    async def one(index: int) -> None:
        nonlocal served_by
        async with gate:
            if ctx.writer.pause_requested:
                return  # pause between items: what is in flight finishes, nothing new starts
            item = items[index]
            completion = await ctx.complete(
                render(step.prompt, ctx.outputs, item=item.text), variant=0, stream=False
            )
            usage["input"] += completion.input_tokens
            usage["output"] += completion.output_tokens
            served_by = completion.served_by
            outputs[index] = completion.text
            await ctx.writer.item(
                step.id,
                pb.StepItem(index=index, heading=item.heading, output=completion.text),
                draft(
                    ev.FAN_OUT_PROGRESS,
                    step_id=step.id,
                    index=index,
                    done=len(outputs),
                    total=total,
                    heading=item.heading,
                ),
            )

    async with asyncio.TaskGroup() as group:  # one failure cancels the rest
        for index in range(total):
            if index not in outputs:
                group.create_task(one(index))
    if len(outputs) < total:
        raise PauseRequested()
    return StepResult(
        output="\n\n".join(outputs[i] for i in range(total)),
        input_tokens=usage["input"],
        output_tokens=usage["output"],
        served_by=served_by or (step.providers[0] if step.providers else ""),
        extra={"items": total},
    )
