"""`openai` and `openai_compatible`: Chat Completions through the official SDK, streamed.

`openai_compatible` is any server speaking the same API at its own base URL (Ollama, vLLM,
llama.cpp server, LM Studio); such servers know `max_tokens`, OpenAI's newer models want
`max_completion_tokens`.
"""

from __future__ import annotations

from typing import Any

import openai
from openai import omit

from nyxflow_engine.providers.base import (
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
    chat_messages,
    error_detail,
    finish_of,
    model_or,
)

DEFAULT_MODEL = "gpt-4.1"
# finish_reason of a usable answer; any other (content_filter, tool_calls) is not one.
ENDINGS = {"stop": FINISH_STOP, "length": FINISH_MAX_TOKENS}
BLOCKED = ("content_filter",)


class OpenAIProvider:
    def __init__(self, endpoint: Endpoint, *, name: str = "openai") -> None:
        self.name = name
        self._endpoint = endpoint
        self._client: openai.AsyncOpenAI | None = None

    def _connect(self) -> openai.AsyncOpenAI:
        if self._client is None:
            compatible = self.name != "openai"
            self._client = openai.AsyncOpenAI(
                # Local servers often need no key; the SDK insists on one.
                api_key=self._endpoint.key(self.name) if not compatible else self._local_key(),
                base_url=self._endpoint.base_url,
                timeout=self._endpoint.timeout_s,
                max_retries=0,  # the chain retries, with its own budget and classification
            )
        return self._client

    def _local_key(self) -> str:
        key = self._endpoint.api_key
        return key.get_secret_value() if key is not None and key.get_secret_value() else "none"

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        client = self._connect()
        model = model_or(request, DEFAULT_MODEL)
        messages: list[Any] = chat_messages(request)
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        # OpenAI's newer models take only max_completion_tokens; compatible servers max_tokens.
        modern = self.name == "openai"
        parts: list[str] = []
        said: str | None = None  # the finish_reason: without one the stream was cut
        input_tokens, output_tokens = 0, 0
        try:
            stream = await client.chat.completions.create(
                model=model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                max_completion_tokens=request.max_tokens if modern else omit,
                max_tokens=omit if modern else request.max_tokens,
            )
            # Closed on the way out: a cancel, a lost lease or a stall left the response read
            # to its end (the provider generating, and billing) until a collector came by.
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        input_tokens = chunk.usage.prompt_tokens
                        output_tokens = chunk.usage.completion_tokens
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        await on_delta(choice.delta.content)
                    if choice.finish_reason is not None:
                        said = choice.finish_reason
        except openai.APIStatusError as error:
            message_text, code = error_detail(error.body)
            raise failure(
                self.name,
                error.status_code,
                message_text or error.message,
                code,
                retry_after_s=retry_after_s(error.response.headers),
            ) from None
        except (openai.APIConnectionError, *TRANSPORT_ERRORS) as error:
            if said is None:
                raise failure(
                    self.name, None, f"connection failed: {type(error).__name__}"
                ) from None
            # The answer had ended (its usage or [DONE] may be lost): a retry pays again.
        except openai.APIError as error:  # an error event inside the stream, after a 200
            message_text, code = error_detail(error.body)
            raise failure(self.name, STREAM_OK, message_text or error.message, code) from None
        finish = finish_of(self.name, request, "".join(parts), said, ENDINGS, BLOCKED)
        return Completion(
            text="".join(parts),
            finish_reason=finish,
            input_tokens=input_tokens,
            output_tokens=output_tokens or len(parts),
            served_by=f"{self.name}:{model}",
        )
