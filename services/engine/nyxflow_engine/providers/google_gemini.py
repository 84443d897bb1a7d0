"""`google`: Gemini through the official google-genai SDK, streamed."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from enum import Enum
from typing import Any

import httpx
import httpx2
from google import genai
from google.genai import errors, types

from nyxflow_engine.providers.base import (
    FINISH_MAX_TOKENS,
    FINISH_STOP,
    Completion,
    CompletionRequest,
    OnDelta,
)
from nyxflow_engine.providers.failures import (
    QUOTA_PER_DAY,
    QUOTA_PER_MINUTE,
    STREAM_OK,
    Action,
    ProviderFailure,
    duration_s,
    failure,
)
from nyxflow_engine.providers.remote import (
    CONTINUE,
    TRANSPORT_ERRORS,
    Endpoint,
    finish_of,
    model_or,
)

DEFAULT_MODEL = "gemini-2.5-pro"
# finishReason of a usable answer; any other (OTHER, MALFORMED_RESPONSE, …) is not one.
ENDINGS = {"STOP": FINISH_STOP, "MAX_TOKENS": FINISH_MAX_TOKENS}
BLOCKED = (
    "SAFETY",
    "RECITATION",
    "LANGUAGE",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
    "IMAGE_OTHER",
    "MODEL_ARMOR",
)


# The SDK opens its responses with httpx2 (or httpx, in older releases).
Response = httpx.Response | httpx2.Response
# The responses the SDK opened for the call this task makes. Its stream is a chain of async
# generators, each leaving the one it reads to the collector: a cancelled, stalled or failed
# call kept reading the answer (the provider generating, and billing) until a collection came
# by. The call closes them on its way out.
_OPENED: ContextVar[list[Response] | None] = ContextVar("gemini_opened", default=None)


async def _noted(response: Response) -> None:
    opened = _OPENED.get()
    if opened is not None:
        opened.append(response)


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
                    async_client_args={"event_hooks": {"response": [_noted]}},
                ),
            )
        return self._client

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        opened: list[Response] = []
        noting = _OPENED.set(opened)
        try:
            return await self._complete(request, on_delta)
        finally:
            _OPENED.reset(noting)
            for response in opened:
                # Whatever closing a broken stream raises, the call's own outcome stands (a
                # failure, or the cancel), and the other responses are closed too.
                with contextlib.suppress(Exception):
                    await response.aclose()

    async def _complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
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
        said: str | None = None  # the finishReason: without one the stream was cut
        input_tokens, output_tokens = 0, 0
        try:
            stream = await client.aio.models.generate_content_stream(
                model=model, contents=contents, config=config
            )
            async for chunk in stream:
                feedback = chunk.prompt_feedback
                if feedback is not None and feedback.block_reason is not None:
                    # No candidates at all: the prompt itself was refused.
                    refused = _word(feedback.block_reason)
                    raise ProviderFailure(Action.NEXT, f"{self.name}: prompt blocked ({refused})")
                for candidate in chunk.candidates or []:
                    for part in (candidate.content.parts or []) if candidate.content else []:
                        if part.text:
                            parts.append(part.text)
                            await on_delta(part.text)
                    if candidate.finish_reason is not None:
                        said = _word(candidate.finish_reason)
                usage = chunk.usage_metadata
                if usage is not None:
                    input_tokens = usage.prompt_token_count or input_tokens
                    # Thinking is billed as output and counts against max_output_tokens.
                    spent = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
                    output_tokens = spent or output_tokens
        except errors.APIError as error:
            status = error.code if isinstance(error.code, int) else None
            code = " ".join([error.status or "", *_reasons(error.details)])
            raise failure(
                self.name,
                status,
                error.message or str(error),
                code,
                retry_after_s=_retry_delay_s(error.details),
            ) from None
        except errors.UnknownApiResponseError:  # not JSON: a corrupt frame, a proxy's page
            raise failure(self.name, STREAM_OK, "unexpected response (not JSON)") from None
        except TRANSPORT_ERRORS as error:
            if said is None:
                raise failure(
                    self.name, None, f"connection failed: {type(error).__name__}"
                ) from None
            # The answer had ended, only the connection's close was lost: a retry pays again.
        finish = finish_of(self.name, request, "".join(parts), said, ENDINGS, BLOCKED)
        return Completion(
            text="".join(parts),
            finish_reason=finish,
            input_tokens=input_tokens,
            output_tokens=output_tokens or len(parts),
            served_by=f"{self.name}:{model}",
        )


def _word(value: Any) -> str:
    """The API's own word for an enum the SDK may or may not know."""
    return str(value.value if isinstance(value, Enum) else value)


def _details(body: Any) -> list[dict[str, Any]]:
    inner = body.get("error", body) if isinstance(body, dict) else None
    details = inner.get("details") if isinstance(inner, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _of_type(detail: dict[str, Any], name: str) -> bool:
    return str(detail.get("@type", "")).endswith(f"google.rpc.{name}")


def _reasons(body: Any) -> list[str]:
    """The codes an error body carries beyond its status: ErrorInfo's reason (an expired key
    is a 400 INVALID_ARGUMENT that only its reason, API_KEY_INVALID, tells apart from a bad
    request), and which quota a 429 ran out of. Its message says "exceeded your current
    quota" of a per-minute limit, back in seconds, and of a daily one alike."""
    codes: list[str] = []
    for detail in _details(body):
        if _of_type(detail, "ErrorInfo") and detail.get("reason"):
            codes.append(str(detail["reason"]))
        if _of_type(detail, "QuotaFailure"):
            for violation in detail.get("violations") or []:
                quota = str(violation.get("quotaId", "")) if isinstance(violation, dict) else ""
                if "PerDay" in quota:
                    codes.append(QUOTA_PER_DAY)
                elif "PerMinute" in quota or "PerSecond" in quota:
                    codes.append(QUOTA_PER_MINUTE)
    return codes


def _retry_delay_s(body: Any) -> float | None:
    """RetryInfo's retryDelay: when Gemini says the quota is back."""
    for detail in _details(body):
        if _of_type(detail, "RetryInfo"):
            return duration_s(detail.get("retryDelay"))
    return None
