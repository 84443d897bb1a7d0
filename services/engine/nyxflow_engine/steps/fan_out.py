"""`fan_out`: split an earlier output into items and run the prompt per item, a bounded number
at a time. Each item is persisted as its own row the moment it is done, so a crash or a pause
loses nothing and resume runs only the items that are missing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping

from nyxflow import events as ev
from nyxflow.client import left_out_from, listed_with
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.cut_off import Outputs, marked
from nyxflow_engine.providers.base import FINISH_MAX_TOKENS, FINISH_STOP, served_by_all
from nyxflow_engine.splitting import Item, split_items
from nyxflow_engine.steps.context import PauseRequested, StepContext, StepResult, together
from nyxflow_engine.templating import render
from nyxflow_engine.writer import draft


async def run_fan_out(ctx: StepContext) -> StepResult:
    step, spec = ctx.step, ctx.spec
    split = spec.split or "headings"
    # A source cut at its token limit is cut within its last item, which often reads whole:
    # that item's model is told where it stops. (A cut JSON array does not parse.)
    cut_source = (
        split != "json" and isinstance(ctx.outputs, Outputs) and spec.source in ctx.outputs.cut
    )
    # Not each item's whole prompt: one that quotes its source weighs items times the source
    # (10,000 items of a 0.8 MB source took 8.7 s with nothing else running, heartbeats
    # included, and the live run was swept as an orphan). What is around the item, once.
    around = context_hash(step.prompt, ctx.outputs)
    # In a thread: 100,000 lines split and hashed held the engine's loop for 0.7 s, and
    # every other run on it went without heartbeat or write.
    items, hashes = await asyncio.to_thread(
        hashed_items, ctx.outputs.get(spec.source, ""), split, cut_source, around
    )
    total = len(items)
    # An earlier attempt's item counts only if made from the same input: a source that ran
    # again (retry, another alternative) keeps its unchanged items, and the changed ones are
    # redone, their rows replaced. An item stored before hashes were kept has none: runs
    # dropped it if its source changed, so one still here was made from this source.
    kept = [
        i
        for i in await stored_items(ctx)
        if i.index < total
        and i.heading == items[i.index].heading
        and i.input_hash in ("", hashes[i.index])
    ]
    outputs = {i.index: i.output for i in kept}
    # Items that stopped at max_tokens, those of an earlier attempt included: the step is
    # marked truncated if any is, so a cut-off item does not pass for a complete one.
    cut = {i.index for i in kept if i.truncated}
    # The most a cut item's last request used: an earlier attempt's items know only their sum.
    cut_used = max((i.output_tokens for i in kept if i.truncated), default=0)
    # The step's usage is every item's, those an earlier execution finished included.
    usage = {
        "input": sum(i.input_tokens for i in kept),
        "output": sum(i.output_tokens for i in kept),
    }
    # Who served each item, those an earlier execution stored included (a fan-out resumed
    # with every item done runs none, and must not name the chain's first).
    served_by = {i.index: i.served_by for i in kept}

    async def one(index: int) -> None:
        nonlocal cut_used
        item = items[index]
        completion = await ctx.complete(
            render(step.prompt, ctx.outputs, item=item.text), variant=0, stream=False
        )
        usage["input"] += completion.input_tokens
        usage["output"] += completion.output_tokens
        served_by[index] = completion.served_by
        outputs[index] = completion.text
        if completion.truncated:
            cut.add(index)
            cut_used = max(cut_used, completion.last_output_tokens)
        await ctx.writer.item(
            step.id,
            pb.StepItem(
                index=index,
                heading=item.heading,
                output=completion.text,
                truncated=completion.truncated,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                input_hash=hashes[index],
                served_by=completion.served_by,
            ),
            draft(
                ev.FAN_OUT_PROGRESS,
                step_id=step.id,
                index=index,
                done=len(outputs),
                total=total,
                heading=item.heading,
                **({"truncated": True} if completion.truncated else {}),
                # why it was not continued further: the continuation failed
                **(
                    {"continuation_error": completion.continuation_error}
                    if completion.continuation_error
                    else {}
                ),
            ),
        )

    missing = (index for index in range(total) if index not in outputs)

    async def worker() -> None:
        """The next missing item, until none is left or a pause is asked for. `concurrency`
        of these run, not a task per item: 100,000 tasks took seconds of the engine's loop to
        start, and again to cancel."""
        for index in missing:  # shared by the workers: each item once, in index order
            if ctx.writer.pause_requested:
                return  # pause between items: what is in flight finishes, nothing new starts
            await one(index)

    workers = min(max(1, spec.concurrency or 4), total - len(outputs))
    # One failure cancels the rest.
    await together([worker() for _ in range(workers)])
    if len(outputs) < total:
        raise PauseRequested()
    return StepResult(
        output="\n\n".join(marked(outputs[i]) if i in cut else outputs[i] for i in range(total)),
        finish_reason=FINISH_MAX_TOKENS if cut else FINISH_STOP,
        truncated=bool(cut),
        input_tokens=usage["input"],
        output_tokens=usage["output"],
        cut_output_tokens=cut_used,
        served_by=served_by_all(served_by[i] for i in sorted(served_by))
        or (step.providers[0] if step.providers else ""),
        extra={"items": total, **({"truncated_items": sorted(cut)} if cut else {})},
        item_count=total,
    )


async def stored_items(ctx: StepContext) -> list[pb.StepItem]:
    """The step's stored items, outputs included: the run as read lists a fan-out's items up
    to a budget (Step.items_left_out) and their outputs up to another
    (StepItem.output_left_out), and the rest are fetched here, from the first left out on.
    Only the claim's listed items would run every item past them again."""
    start = left_out_from(ctx.step)
    if start is None:
        return list(ctx.step.items)
    return listed_with(ctx.step, start, await ctx.writer.stored_items(ctx.step.id, start))


def hashed_items(source: str, split: str, cut: bool, around: bytes) -> tuple[list[Item], list[str]]:
    """The source's items, the last marked if the source was `cut`, and each one's input hash
    with the prompt `around` it."""
    items = split_items(source, split)
    if items and cut:
        items[-1] = Item(items[-1].heading, marked(items[-1].text))
    return items, [input_hash(around, item.text) for item in items]


ITEM = "\0item\0"  # where the item goes, in the prompt hashed once for all items


def context_hash(template: str, outputs: Mapping[str, str]) -> bytes:
    """The fan-out's prompt with every earlier output it reads, but not the item."""
    return hashlib.sha256(render(template, outputs, item=ITEM).encode()).digest()


def input_hash(context: bytes, item: str) -> str:
    """What an item is made from, as StepItem.input_hash: its prompt around it (`context`),
    which holds any earlier output the fan-out reads, and the source item's text."""
    return hashlib.sha256(context + item.encode()).hexdigest()
