"""What a synthesis marked `generates: implementation_prompt` appends: one implementation
prompt per item of its output, and a final consistency check when the workflow asks for it."""

from __future__ import annotations

from collections.abc import Sequence

from nyxflow import constants as kinds
from nyxflow.errors import InvalidArgument
from nyxflow.references import one_line
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.cut_off import marked
from nyxflow_engine.splitting import split_items

MAX_NAME = 200


def unique_name(wanted: str, taken: set[str]) -> str:
    name, n = wanted[:MAX_NAME], 2
    while name in taken:
        suffix = f" ({n})"
        name, n = wanted[: MAX_NAME - len(suffix)] + suffix, n + 1
    taken.add(name)
    return name


def generated_specs(
    synthesis: pb.Step, steps: Sequence[pb.Step], consistency_check: bool
) -> list[pb.StepSpec]:
    """The steps the synthesis's output makes, on its chain. (The consistency check's falls
    back to the chain of steps naming none after it: runs adds that, knowing the workflow's
    and the tenant's.)"""
    # The block these replace frees its names.
    replaced = {s.id for s in generated_block(synthesis, steps)}
    taken = {s.name for s in steps if s.id not in replaced}
    items = split_items(synthesis.output, "headings")
    # The synthesis's model served its chain's first entry where that names none: its steps
    # take the chain and the model together, and run where it ran.
    specs = [
        pb.StepSpec(
            # Named as runs stores it (one line), or a retried generation is not recognised.
            name=unique_name(one_line(f"Implementation prompt {i + 1}: {item.heading}"), taken),
            kind=kinds.IMPLEMENTATION_PROMPT,
            # The plan's text as it is: runs stores a generated step's prompt unchecked and
            # the engine sends it unrendered, so `{{ … }}` it quotes reaches the model intact.
            prompt=_prompt(item.text, cut=synthesis.truncated and i == len(items) - 1),
            providers=list(synthesis.providers),
            model=synthesis.model,
            params_json=synthesis.params_json,
            persona=synthesis.spec.persona,
        )
        for i, item in enumerate(items)
    ]
    if consistency_check and specs:
        specs.append(
            pb.StepSpec(
                name=unique_name("Consistency check", taken),
                kind=kinds.CONSISTENCY_CHECK,
                providers=list(synthesis.providers),
                model=synthesis.model,
                params_json=synthesis.params_json,
                reviews=[synthesis.name, *(s.name for s in specs)],
            )
        )
    return specs


def _prompt(part: str, cut: bool) -> str:
    """The last part of a plan cut at its token limit is marked so: it reads whole often
    enough, and the prompt made from it would pass the cut on without a word."""
    ask = "Write a precise, self-contained implementation prompt for this part of the plan"
    if not cut:
        return f"{ask}:\n\n{part}"
    return (
        f"{ask}. The plan was cut off within this part, where the mark says: say what is "
        f"missing rather than make it up.\n\n{marked(part)}"
    )


def check_generatable(
    synthesis: pb.Step, output: str, steps: Sequence[pb.Step], consistency_check: bool
) -> None:
    """A synthesis whose output cannot be generated from fails itself: no headings, or more
    steps than the workflow may hold. Completed, it left a run that failed after it, with every
    step completed, and each resume failed the same way at once."""
    try:
        items = len(split_items(output, "headings"))
    except InvalidArgument:
        raise InvalidArgument(
            "the output has no markdown headings to make implementation prompts from",
            field="generates",
        ) from None
    count = items + (1 if consistency_check else 0)
    # The block this output replaces makes room; every other step stays.
    replaced = {s.id for s in generated_block(synthesis, steps)}
    others = sum(1 for s in steps if s.id not in replaced)
    if others + count > kinds.MAX_STEPS:
        check = " and a consistency check" if consistency_check else ""
        raise InvalidArgument(
            f"the output splits into {items} parts by its headings, which would generate "
            f"{count} steps ({items} implementation prompts{check}), but a workflow holds at "
            f"most {kinds.MAX_STEPS} steps and its other steps ({others}) leave room for "
            f"{max(kinds.MAX_STEPS - others, 0)}; ask for fewer parts",
            field="generates",
        )


def already_generated(synthesis: pb.Step, steps: Sequence[pb.Step]) -> bool:
    """Generated steps sit right after their synthesis; resume keeps them, never doubles them."""
    return bool(generated_block(synthesis, steps))


def generated_block(synthesis: pb.Step, steps: Sequence[pb.Step]) -> list[pb.Step]:
    """The steps `synthesis` generated: the auto-generated ones right after it."""
    block: list[pb.Step] = []
    for step in sorted(steps, key=lambda s: s.order):
        if step.order <= synthesis.order:
            continue
        if not step.auto_generated:
            break
        block.append(step)
    return block
