"""What a step kind gets to work with, and what it gives back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from nyxflow import events as ev
from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.providers.base import (
    FINISH_CONTEXT_WINDOW,
    FINISH_STOP,
    Completion,
    CompletionRequest,
    ProviderError,
    served_by_all,
)
from nyxflow_engine.providers.failures import ContextWindowFull
from nyxflow_engine.providers.registry import Providers
from nyxflow_engine.tools.sandbox import SANDBOXED, Sandbox
from nyxflow_engine.writer import LeaseLost, RunWriter, draft

T = TypeVar("T")


class PauseRequested(Exception):
    """The user asked to pause; honoured at a step or fan-out item boundary."""


class DeltaBuffer:
    """Coalesces streamed text: at most one step_delta event per stream per `flush_s`."""

    def __init__(
        self, writer: RunWriter, step_id: str, flush_s: float, alternative: int = 0
    ) -> None:
        self._writer = writer
        self._step_id = step_id
        self._flush_s = flush_s
        self._alternative = alternative
        self._parts: list[str] = []
        self._last = time.monotonic()
        self._shown = False  # whether this attempt's text has reached the event stream
        self._kept = ""  # the step's earlier completions' text (a continuation's first part)

    async def add(self, text: str) -> None:
        self._parts.append(text)
        if time.monotonic() - self._last >= self._flush_s:
            await self.flush()

    def keep(self, text: str) -> None:
        """A continuation starts: `text`, the completions before it, survives its resets."""
        self._kept = text

    async def reset(self) -> None:
        """A provider attempt broke off mid-stream and is retried: what it showed is void. A
        reset voids the whole stream for clients, so the kept text is sent again after it."""
        self._parts = [self._kept] if self._kept else []
        if self._shown:
            data: dict[str, Any] = {"step_id": self._step_id, "text": "", "reset": True}
            if self._alternative:
                data["alternative"] = self._alternative
            self._writer.events(draft(ev.STEP_DELTA, **data))
            self._shown = False
            await self.flush()

    async def flush(self) -> None:
        if self._parts:
            text, self._parts = "".join(self._parts), []
            self._shown = True
            data: dict[str, Any] = {"step_id": self._step_id, "text": text}
            if self._alternative:
                data["alternative"] = self._alternative
            self._writer.events(draft(ev.STEP_DELTA, **data))
        self._last = time.monotonic()


async def _discard(_: str) -> None:
    return None


async def _nothing() -> None:
    return None


@dataclass
class StepResult:
    output: str
    finish_reason: str = FINISH_STOP
    truncated: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    # Output tokens of the request the answer was cut in (step_truncated's `used`, against
    # the per-request max_tokens); output_tokens sums continuations and items.
    cut_output_tokens: int = 0
    served_by: str = ""
    alternatives: list[Completion] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific, for the event
    # A fan-out's items: runs drops stored ones past it (made from a longer, earlier source).
    item_count: int | None = None

    @classmethod
    def of(cls, completion: Completion, **extra: Any) -> StepResult:
        return cls(
            output=completion.text,
            finish_reason=completion.finish_reason,
            truncated=completion.truncated,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cut_output_tokens=completion.last_output_tokens if completion.truncated else 0,
            served_by=completion.served_by,
            extra=(
                {"continuation_error": completion.continuation_error, **extra}
                if completion.continuation_error
                else extra
            ),
        )


@dataclass
class StepContext:
    step: pb.Step
    steps: Sequence[pb.Step]  # the whole workflow as it stands, in order
    outputs: Mapping[str, str]  # completed steps' outputs by name
    writer: RunWriter
    providers: Providers
    flush_s: float
    tenant_id: str = ""
    repos_root: str | None = None  # where the tenant's repositories may be (nyxflow/repos.py)
    sandbox: Sandbox = SANDBOXED  # where the tenant's commands run (tools/sandbox.py)

    @property
    def spec(self) -> pb.StepSpec:
        return self.step.spec

    @property
    def params(self) -> dict[str, Any]:
        try:
            value = json.loads(self.step.params_json or "{}")
        except json.JSONDecodeError:
            raise InvalidArgument("is not valid JSON", field="params") from None
        if not isinstance(value, dict):
            raise InvalidArgument("must be a JSON object", field="params")
        return value

    async def complete(
        self,
        prompt: str,
        *,
        variant: int = 0,
        stream: bool = True,
        response_format: str = "",
    ) -> Completion:
        """One completion of `prompt` with this step's provider, persona and limits; a
        max_tokens stop is continued up to `auto_continue` times and the text joined. A full
        context window is not: the continuation would not fit either (a "prompt is too long"
        400), so the answer so far is kept, truncated, rather than failed."""
        step = self.step
        deltas = DeltaBuffer(self.writer, step.id, self.flush_s, variant) if stream else None
        on_delta = deltas.add if deltas is not None else _discard
        on_reset = deltas.reset if deltas is not None else _nothing
        text, input_tokens, output_tokens = "", 0, 0
        servers: list[str] = []
        unfinished = ""  # why a continuation failed
        for attempt in range(1 + max(0, self.spec.auto_continue)):
            if deltas is not None:
                deltas.keep(text)
            request = CompletionRequest(
                prompt=prompt,
                model=step.model,
                max_tokens=step.max_tokens,
                system=step.system_prompt,
                params=self.params,
                variant=variant,
                prefix=text,
                response_format=response_format,
            )
            try:
                completion = await self.providers.complete(
                    step.providers,
                    request,
                    on_delta,
                    on_fallback=self._fallback,
                    on_reset=on_reset,
                )
            except ProviderError as error:
                if attempt == 0:
                    raise  # nothing written yet: nothing to keep
                if isinstance(error, ContextWindowFull):
                    # The text so far filled the window: it stands, cut by the window.
                    finish = FINISH_CONTEXT_WINDOW
                else:
                    # The parts written (and paid for) stand, cut as without auto_continue.
                    finish = completion.finish_reason
                    unfinished = error.message
                completion = replace(completion, text="", finish_reason=finish)
                break
            text += completion.text
            servers.append(completion.served_by)
            input_tokens += completion.input_tokens
            output_tokens += completion.output_tokens
            if not completion.truncated or completion.finish_reason == FINISH_CONTEXT_WINDOW:
                break
        if deltas is not None:
            await deltas.flush()
        return Completion(
            text=text,
            finish_reason=completion.finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            served_by=served_by_all(servers),
            request_output_tokens=completion.output_tokens,
            continuation_error=unfinished,
        )

    def _fallback(self, from_: str, to: str, reason: str) -> None:
        data = {"step_id": self.step.id, "from": from_, "to": to, "reason": reason}
        self.writer.events(draft(ev.PROVIDER_FALLBACK, **data))

    async def complete_alternatives(self, prompt: str, **kwargs: Any) -> StepResult:
        """N alternatives (the step's `alternatives`), concurrently; the first is selected."""
        count = max(1, self.spec.alternatives)
        # One failing fails the step: the others are stopped with it. gather() left them
        # streaming, and retrying, on the provider's account after the step had failed.
        completions = await together(
            [self.complete(prompt, variant=i, **kwargs) for i in range(count)]
        )
        result = StepResult.of(completions[0])
        if count > 1:
            result.alternatives = list(completions)
            result.input_tokens = sum(c.input_tokens for c in completions)
            result.output_tokens = sum(c.output_tokens for c in completions)
        return result


async def together(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """`calls` at once, their results in order. The first to fail stops the others (they are
    cancelled, and waited for) and its error is raised, a lost lease before any other.

    Not a TaskGroup: on Python 3.11 a cancelled one keeps its cancelled parent task, whose
    error's traceback holds the group's frame, and with it the execution, its steps and its
    writer, until the collector's full pass."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    if not tasks:
        return []  # a resumed fan-out whose items are all stored
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # nothing to a finished one
        await asyncio.wait(tasks)
    failures: list[BaseException] = []
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]
    if not failures:
        return [t.result() for t in tasks]
    lost = [f for f in failures if isinstance(f, LeaseLost)]
    failure = (lost or failures)[0]
    # Raised from here, the error holds this frame: nothing of this frame may hold it.
    del tasks, task, failures, lost
    try:
        raise failure
    finally:
        del failure
