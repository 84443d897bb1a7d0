"""`consistency_check`: review the named outputs (default: all before it) for contradictions.
The output starts with a verdict line, then the findings."""

from __future__ import annotations

import re

from nyxflow_engine.cut_off import passed_on
from nyxflow_engine.steps.context import StepContext, StepResult
from nyxflow_engine.templating import prompt_of

# Blanks before the label, not \s: \s took newlines too, and from every line start read on
# through every blank line after it (20,000 blank lines before the verdict held the engine
# seconds). After the label \s is safe (it starts only at a "VERDICT:") and lets the word
# stand on the next line, as models sometimes put it.
VERDICT = re.compile(r"^[ \t]*VERDICT:\s*(consistent|inconsistent)\b", re.IGNORECASE | re.MULTILINE)
INSTRUCTION = (
    "Review the outputs below for contradictions, gaps and inconsistencies between them. "
    "Answer with a first line `VERDICT: consistent` or `VERDICT: inconsistent`, then one "
    "finding per line starting with `- `."
)


async def run_consistency_check(ctx: StepContext) -> StepResult:
    # By default every earlier step with an output: this run's own, which `ctx.steps` (the
    # run as claimed) still shows pending, come from `ctx.outputs`.
    names = list(ctx.spec.reviews) or [
        s.name for s in ctx.steps if s.order < ctx.step.order and s.name in ctx.outputs
    ]
    # A cut output reviewed as if whole makes its missing end a finding, or worse, none.
    sections = "\n\n".join(f"### {name}\n{passed_on(ctx.outputs, name)}" for name in names)
    guidance = prompt_of(ctx.step, ctx.outputs).strip()
    prompt = f"{guidance}\n\n{INSTRUCTION}" if guidance else INSTRUCTION
    completion = await ctx.complete(f"{prompt}\n\n{sections}", response_format="verdict")
    match = VERDICT.search(completion.text)
    verdict = match.group(1).lower() if match else "unknown"
    findings = [line[2:].strip() for line in completion.text.splitlines() if line.startswith("- ")]
    return StepResult.of(completion, verdict=verdict, findings=findings, reviewed=names)
