"""What a step kind gets to work with."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nyxflow import events as ev
from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.providers.registry import Providers
from nyxflow_engine.writer import RunWriter, draft


class DeltaBuffer:
    """Coalesces streamed text: at most one step_delta event per step per `flush_s`."""

    def __init__(self, writer: RunWriter, step_id: str, flush_s: float) -> None:
        self._writer = writer
        self._step_id = step_id
        self._flush_s = flush_s
        self._parts: list[str] = []
        self._last = time.monotonic()

    async def add(self, text: str) -> None:
        self._parts.append(text)
        if time.monotonic() - self._last >= self._flush_s:
            await self.flush()

    async def flush(self) -> None:
        if self._parts:
            text, self._parts = "".join(self._parts), []
            await self._writer.events(draft(ev.STEP_DELTA, step_id=self._step_id, text=text))
        self._last = time.monotonic()


@dataclass
class StepContext:
    step: pb.Step
    outputs: Mapping[str, str]  # completed steps' outputs by name, for templates
    writer: RunWriter
    providers: Providers
    deltas: DeltaBuffer

    @property
    def params(self) -> dict[str, Any]:
        try:
            value = json.loads(self.step.params_json or "{}")
        except json.JSONDecodeError:
            raise InvalidArgument("is not valid JSON", field="params") from None
        if not isinstance(value, dict):
            raise InvalidArgument("must be a JSON object", field="params")
        return value
