"""`google`: Gemini through the official google-genai SDK, streamed."""

from __future__ import annotations

from google import genai
from google.genai import errors, types

from nyxflow_engine.providers.base import (
    FINISH_MAX_TOKENS,
    FINISH_STOP,
    Completion,
    CompletionRequest,
    OnDelta,
)
from nyxflow_engine.providers.failures import failure
from nyxflow_engine.providers.remote import CONTINUE, TRANSPORT_ERRORS, Endpoint, model_or

DEFAULT_MODEL = "gemini-2.5-pro"


class GoogleProvider:
    name = "google"

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._client: genai.Client | None = None

    def _connect(self) -> genai.Client:
        if self._client is None:
            self._client = genai.Client(
                api_key=self._endpoint.key(self.name),
                http_options=types.HttpOptions(
                    base_url=self._endpoint.base_url,
                    timeout=int(self._endpoint.timeout_s * 1000),
                ),
            )
        return self._client

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        client = self._connect()
        model = model_or(request, DEFAULT_MODEL)
        contents = [types.Content(role="user", parts=[types.Part(text=request.prompt)])]
        if request.prefix:
            contents += [
                types.Content(role="model", parts=[types.Part(text=request.prefix)]),
                types.Content(role="user", parts=[types.Part(text=CONTINUE)]),
            ]
        config = types.GenerateContentConfig(
            max_output_tokens=request.max_tokens,
            system_instruction=request.system or None,
        )
        parts: list[str] = []
        finish, input_tokens, output_tokens = FINISH_STOP, 0, 0
        try:
            stream = await client.aio.models.generate_content_stream(
                model=model, contents=contents, config=config
            )
            async for chunk in stream:
                for candidate in chunk.candidates or []:
                    for part in (candidate.content.parts or []) if candidate.content else []:
                        if part.text:
                            parts.append(part.text)
                            await on_delta(part.text)
                    if candidate.finish_reason == types.FinishReason.MAX_TOKENS:
                        finish = FINISH_MAX_TOKENS
                if chunk.usage_metadata is not None:
                    input_tokens = chunk.usage_metadata.prompt_token_count or input_tokens
                    output_tokens = chunk.usage_metadata.candidates_token_count or output_tokens
        except errors.APIError as error:
            status = error.code if isinstance(error.code, int) else None
            raise failure(
                self.name, status, error.message or str(error), error.status or ""
            ) from None
        except TRANSPORT_ERRORS as error:
            raise failure(self.name, None, f"connection failed: {type(error).__name__}") from None
        return Completion(
            text="".join(parts),
            finish_reason=finish,
            input_tokens=input_tokens,
            output_tokens=output_tokens or len(parts),
            served_by=f"{self.name}:{model}",
        )
