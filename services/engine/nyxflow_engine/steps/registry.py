"""Step kind → the coroutine that executes it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nyxflow import constants as kinds
from nyxflow.errors import InvalidArgument
from nyxflow_engine.providers.base import Completion
from nyxflow_engine.steps.context import StepContext
from nyxflow_engine.steps.llm import run_llm

StepRunner = Callable[[StepContext], Awaitable[Completion]]

RUNNERS: dict[str, StepRunner] = {
    kinds.LLM: run_llm,
    kinds.SYNTHESIS: run_llm,
    kinds.CONSISTENCY_CHECK: run_llm,
    kinds.IMPLEMENTATION_PROMPT: run_llm,
}


def runner_for(kind: str) -> StepRunner:
    runner = RUNNERS.get(kind)
    if runner is None:
        raise InvalidArgument(f"step kind {kind!r} cannot be executed yet", field="kind")
    return runner
