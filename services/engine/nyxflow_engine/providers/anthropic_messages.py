"""`anthropic`: the Messages API through the official SDK, streamed."""

from __future__ import annotations

from typing import Any

import anthropic

from nyxflow_engine.providers.base import (
    FINISH_MAX_TOKENS,
    FINISH_STOP,
    Completion,
    CompletionRequest,
    OnDelta,
)
from nyxflow_engine.providers.failures import failure
from nyxflow_engine.providers.remote import TRANSPORT_ERRORS, Endpoint, error_detail, model_or

DEFAULT_MODEL = "claude-sonnet-4-5"


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
        # The model goes on from the prefill without its trailing whitespace, and its own
        # whitespace at the join would follow ours, which the text so far still ends with.
        at_join = request.prefix != request.prefix.rstrip()
        try:
            async with client.messages.stream(
                model=model, max_tokens=request.max_tokens, messages=messages, **extra
            ) as stream:
                async for piece in stream.text_stream:
                    text = piece.lstrip() if at_join else piece
                    if not text:
                        continue
                    at_join = False
                    parts.append(text)
                    await on_delta(text)
                message = await stream.get_final_message()
        except anthropic.APIStatusError as error:
            message_text, code = error_detail(error.body)
            raise failure(
                self.name, error.status_code, message_text or error.message, code
            ) from None
        except (anthropic.APIConnectionError, *TRANSPORT_ERRORS) as error:
            raise failure(self.name, None, f"connection failed: {type(error).__name__}") from None
        stop = FINISH_MAX_TOKENS if message.stop_reason == "max_tokens" else FINISH_STOP
        return Completion(
            text="".join(parts),
            finish_reason=stop,
            input_tokens=message.usage.input_tokens,
            output_tokens=message.usage.output_tokens,
            served_by=f"{self.name}:{model}",
        )
