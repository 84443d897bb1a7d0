"""`anthropic`: the Messages API through the official SDK, streamed."""

from __future__ import annotations

from typing import Any

import anthropic

from nyxflow_engine.providers.base import (
    FINISH_CONTEXT_WINDOW,
    FINISH_MAX_TOKENS,
    FINISH_STOP,
    Completion,
    CompletionRequest,
    OnDelta,
)
from nyxflow_engine.providers.failures import STREAM_OK, failure, retry_after_s
from nyxflow_engine.providers.remote import (
    TRANSPORT_ERRORS,
    Endpoint,
    error_detail,
    finish_of,
    model_or,
)

DEFAULT_MODEL = "claude-sonnet-4-5"
# stop_reason of a usable answer; any other (refusal, tool_use, pause_turn) is not one.
ENDINGS = {
    "end_turn": FINISH_STOP,
    "stop_sequence": FINISH_STOP,
    "max_tokens": FINISH_MAX_TOKENS,
    "model_context_window_exceeded": FINISH_CONTEXT_WINDOW,
}
BLOCKED = ("refusal",)


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._client: anthropic.AsyncAnthropic | None = None

    def _connect(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self._endpoint.key(self.name),
                base_url=self._endpoint.base_url,
                timeout=self._endpoint.timeout_s,
                max_retries=0,  # the chain retries, with its own budget and classification
            )
        return self._client

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        client = self._connect()
        model = model_or(request, DEFAULT_MODEL)
        messages: list[Any] = [{"role": "user", "content": request.prompt}]
        if request.prefix:
            # Prefill: the answer continues the assistant turn (no trailing whitespace allowed).
            messages.append({"role": "assistant", "content": request.prefix.rstrip()})
        extra: dict[str, Any] = {"system": request.system} if request.system else {}
        parts: list[str] = []
        join = _Join(request.prefix)
        # message_stop's message: without it the stream was cut, whatever came before
        stopped: anthropic.types.Message | None = None
        message: anthropic.types.Message
        try:
            async with client.messages.stream(
                model=model, max_tokens=request.max_tokens, messages=messages, **extra
            ) as stream:
                async for event in stream:
                    if event.type == "message_stop":
                        stopped = event.message
                    if event.type != "text":
                        continue
                    text = join.past_overlap(event.text)
                    if not text:
                        continue
                    parts.append(text)
                    await on_delta(text)
                message = await stream.get_final_message()
        except anthropic.APIStatusError as error:
            message_text, code = error_detail(error.body)
            raise failure(
                self.name,
                error.status_code,
                message_text or error.message,
                code,
                retry_after_s=retry_after_s(error.response.headers),
            ) from None
        except (anthropic.APIConnectionError, *TRANSPORT_ERRORS) as error:
            if stopped is None:
                raise failure(
                    self.name, None, f"connection failed: {type(error).__name__}"
                ) from None
            # The answer had ended, only the connection's close was lost: a retry pays again.
            message = stopped
        except anthropic.APIError as error:  # a body the SDK could not read, after a 200
            raise failure(self.name, STREAM_OK, f"unexpected response: {error.message}") from None
        said = message.stop_reason if stopped is not None else None
        finish = finish_of(self.name, request, "".join(parts), said, ENDINGS, BLOCKED)
        return Completion(
            text="".join(parts),
            finish_reason=finish,
            input_tokens=message.usage.input_tokens,
            output_tokens=message.usage.output_tokens,
            served_by=f"{self.name}:{model}",
        )


class _Join:
    """The model goes on from the prefill without its trailing whitespace, which the text so
    far still ends with: what it sends again of that whitespace is dropped, and no more (the
    next line's indentation, after a cut at a newline, is its own). It may come in several
    events, each whitespace only."""

    def __init__(self, prefix: str) -> None:
        self._ours = prefix[len(prefix.rstrip()) :]  # still to be matched

    def past_overlap(self, text: str) -> str:
        if not self._ours:
            return text
        same = 0
        while same < min(len(text), len(self._ours)) and text[same] == self._ours[same]:
            same += 1
        # Wholly ours: the next event may go on matching; otherwise the join is behind us.
        self._ours = self._ours[same:] if same == len(text) else ""
        return text[same:]
