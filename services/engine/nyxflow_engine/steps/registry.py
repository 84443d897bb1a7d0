"""Step kind → the coroutine that executes it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nyxflow import constants as kinds
from nyxflow.errors import InvalidArgument
from nyxflow_engine.steps.consistency import run_consistency_check
from nyxflow_engine.steps.context import StepContext, StepResult
from nyxflow_engine.steps.fan_out import run_fan_out
from nyxflow_engine.steps.llm import run_llm
from nyxflow_engine.steps.tool import run_tool

StepRunner = Callable[[StepContext], Awaitable[StepResult]]

RUNNERS: dict[str, StepRunner] = {
    kinds.LLM: run_llm,
    kinds.SYNTHESIS: run_llm,
    kinds.IMPLEMENTATION_PROMPT: run_llm,
    kinds.FAN_OUT: run_fan_out,
    kinds.CONSISTENCY_CHECK: run_consistency_check,
    kinds.TOOL: run_tool,
}


def runner_for(kind: str) -> StepRunner:
    runner = RUNNERS.get(kind)
    if runner is None:
        raise InvalidArgument(f"unknown step kind {kind!r}", field="kind")
    return runner
