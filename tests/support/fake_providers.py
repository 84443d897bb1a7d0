"""A loopback server speaking the real Anthropic, OpenAI and Gemini wire formats.

The official SDKs are pointed at it through their ``base_url`` so that their own request
building, SSE parsing and error mapping run unchanged; only the network peer is fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

PROVIDERS = ("anthropic", "openai", "google")

# Each provider's own word for the two ways a completion ends.
FINISH: dict[str, dict[str, str]] = {
    "anthropic": {"stop": "end_turn", "max_tokens": "max_tokens"},
    "openai": {"stop": "stop", "max_tokens": "length"},
    "google": {"stop": "STOP", "max_tokens": "MAX_TOKENS"},
}

ANTHROPIC_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)
OPENAI_QUOTA = "You exceeded your current quota, please check your plan and billing details."
GOOGLE_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, head to: "
    "https://ai.google.dev/gemini-api/docs/rate-limits."
)

# error kind -> (status, Anthropic error.type, message)
_ANTHROPIC_ERRORS: dict[str, tuple[int, str, str]] = {
    "credit": (400, "invalid_request_error", ANTHROPIC_CREDIT),
    "quota": (400, "invalid_request_error", ANTHROPIC_CREDIT),
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "not_found": (404, "not_found_error", "model: {model}"),
    "rate_limit": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
    ),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server": (500, "api_error", "Internal server error"),
    "invalid": (400, "invalid_request_error", "messages: at least one message is required"),
}

# error kind -> (status, OpenAI error.type, error.code, message)
_OPENAI_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "credit": (429, "insufficient_quota", "insufficient_quota", OPENAI_QUOTA),
    "quota": (429, "insufficient_quota", "insufficient_quota", OPENAI_QUOTA),
    "auth": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-fake. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    "not_found": (
        404,
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    "rate_limit": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 20s.",
    ),
    "overloaded": (
        503,
        "server_error",
        None,
        "The engine is currently overloaded, please try again later.",
    ),
    "server": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "invalid": (
        400,
        "invalid_request_error",
        None,
        "Invalid value for 'messages': empty array. Expected an array with minimum length 1.",
    ),
}

# error kind -> (status, google.rpc status, message). A bad API key really is a 400.
_GOOGLE_ERRORS: dict[str, tuple[int, str, str]] = {
    "credit": (429, "RESOURCE_EXHAUSTED", GOOGLE_QUOTA),
    "quota": (429, "RESOURCE_EXHAUSTED", GOOGLE_QUOTA),
    "auth": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
    "not_found": (
        404,
        "NOT_FOUND",
        "models/{model} is not found for API version {version}, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their "
        "supported methods.",
    ),
    "rate_limit": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    "overloaded": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "server": (
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    "invalid": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
}

ERROR_KINDS = frozenset(_ANTHROPIC_ERRORS)


@dataclass
class Reply:
    text: str = "fake answer"  # streamed in chunks of ~`chunk` characters
    chunk: int = 8
    finish: str = "stop"  # "stop" or "max_tokens", mapped to each provider's own word
    input_tokens: int = 11
    output_tokens: int | None = None  # None = number of chunks
    error: str | None = None  # credit|quota|auth|not_found|rate_limit|overloaded|server|invalid
    message: str | None = None  # overrides the error message
    drop_after: int | None = None  # streaming: cut the connection after this many text chunks
    # Streaming (anthropic, openai): `error` arrives inside the 200 stream after this many text
    # chunks, as the APIs send an overload met mid-answer, instead of as the response.
    error_after: int | None = None
    delay_s: float = 0.0  # sleep between text chunks
    # An error's "come back then": the `retry-after` header (anthropic, openai), or RetryInfo
    # in the body (google, which also names the quota run out of, as a QuotaFailure).
    retry_after_s: float | None = None
    quota_id: str | None = None  # google, e.g. GenerateRequestsPerDayPerProjectPerModel

    def __post_init__(self) -> None:
        # Fail in the test that scripts a typo, not as a puzzling 500 later.
        if self.finish not in ("stop", "max_tokens"):
            raise ValueError(f"finish must be 'stop' or 'max_tokens', not {self.finish!r}")
        if self.error is not None and self.error not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error!r}; expected {sorted(ERROR_KINDS)}")
        if self.chunk < 1:
            raise ValueError("chunk must be at least 1")
        if self.error_after is not None and self.error is None:
            raise ValueError("error_after needs the error kind that arrives mid-stream")

    def pieces(self) -> list[str]:
        return [self.text[i : i + self.chunk] for i in range(0, len(self.text), self.chunk)]

    def out_tokens(self) -> int:
        return len(self.pieces()) if self.output_tokens is None else self.output_tokens


@dataclass
class Raw:
    """A reply sent as these exact bytes (see provider_wire.py): what the scripted Reply
    cannot say, such as a stream without its last event, a refusal, a proxy's page."""

    frames: list[bytes]
    status: int = 200
    media_type: str = "text/event-stream"
    drop: bool = False  # close the socket after the frames instead of ending the body

    def response(self) -> _Frames:
        return _Frames(
            [],
            self.frames,
            [],
            media_type=self.media_type,
            headers={},
            drop=self.drop,
            status=self.status,
        )


@dataclass
class Recorded:
    provider: str  # "anthropic" | "openai" | "google"
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)  # when it came


KEEPALIVE_S = 0.1


class _Frames(StreamingResponse):
    """Writes head, text frames and tail itself so it can stop before the tail.

    Returning without the final empty body makes uvicorn close the socket mid chunked body,
    which is what a dropped upstream connection looks like to the client.
    """

    def __init__(
        self,
        head: list[bytes],
        texts: list[bytes],
        tail: list[bytes],
        *,
        media_type: str,
        headers: Mapping[str, str],
        delay_s: float = 0.0,
        drop: bool = False,
        status: int = 200,
        keepalive: bytes | None = None,
    ) -> None:
        super().__init__((), media_type=media_type, headers=headers, status_code=status)
        self.head, self.texts, self.tail = head, texts, tail
        self.delay_s, self.drop, self.keepalive = delay_s, drop, keepalive

    async def _pause(self, send: Send) -> None:
        """The wait between text frames; a provider that keeps its stream alive (Anthropic's
        `ping` events) sends its keep-alive meanwhile, as the real one does while it thinks."""
        if self.keepalive is None:
            await asyncio.sleep(self.delay_s)
            return
        until = time.monotonic() + self.delay_s
        while (left := until - time.monotonic()) > 0:
            await asyncio.sleep(min(left, KEEPALIVE_S))
            await send({"type": "http.response.body", "body": self.keepalive, "more_body": True})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        for frame in self.head:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        for i, frame in enumerate(self.texts):
            if i and self.delay_s:
                await self._pause(send)
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        if self.drop:
            return  # uvicorn logs "returned without completing response" and closes the socket
        for frame in self.tail:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _retry_after(reply: Reply) -> dict[str, str]:
    return {} if reply.retry_after_s is None else {"retry-after": f"{reply.retry_after_s:g}"}


def _google_details(reply: Reply, model: str) -> list[dict[str, Any]]:
    """What a real 429 RESOURCE_EXHAUSTED carries beside its message."""
    details: list[dict[str, Any]] = []
    if reply.quota_id is not None:
        violation = {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
            "quotaId": reply.quota_id,
            "quotaDimensions": {"location": "global", "model": model},
            "quotaValue": "50",
        }
        details.append(
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]}
        )
    if reply.retry_after_s is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{reply.retry_after_s:g}s",
            }
        )
    return details


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _truncated(body: dict[str, Any], headers: Mapping[str, str]) -> _Frames:
    # A non-streamed reply cut in half: the SDK must not be able to parse it.
    raw = _dumps(body).encode()
    return _Frames(
        [raw[: len(raw) // 2]], [], [], media_type="application/json", headers=headers, drop=True
    )


class FakeProviders:
    base_url: str  # "http://127.0.0.1:<port>"
    requests: list[Recorded]

    def __init__(self) -> None:
        self.base_url = ""
        self.requests = []
        self._queues: dict[str, deque[Reply | Raw]] = {p: deque() for p in PROVIDERS}
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self._anthropic, methods=["POST"]),
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                # The genai SDK puts its api_version (v1 or v1beta) first and the method
                # after a colon: /v1beta/models/gemini-x:streamGenerateContent?alt=sse
                Route("/{version}/models/{target}", self._google, methods=["POST"]),
            ]
        )

    def script(self, provider: str, *replies: Reply | Raw) -> None:
        self._queue(provider).extend(replies)

    def count(self, provider: str) -> int:
        self._queue(provider)
        return sum(1 for r in self.requests if r.provider == provider)

    def reset(self) -> None:
        """Forget scripted replies and recorded requests (for a server shared by tests)."""
        self.requests.clear()
        for queue in self._queues.values():
            queue.clear()

    def _queue(self, provider: str) -> deque[Reply | Raw]:
        if provider not in self._queues:
            raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")
        return self._queues[provider]

    def _next(self, provider: str) -> Reply | Raw:
        queue = self._queue(provider)
        return queue.popleft() if queue else Reply()

    async def _record(self, provider: str, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        self.requests.append(Recorded(provider, path, dict(request.headers), body))
        return body

    # Anthropic Messages API

    async def _anthropic(self, request: Request) -> Response:
        body = await self._record("anthropic", request)
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        headers = {"request-id": request_id}

        def error(status: int, kind: str, message: str) -> Response:
            payload = {
                "type": "error",
                "error": {"type": kind, "message": message},
                "request_id": request_id,
            }
            return JSONResponse(payload, status_code=status, headers=headers)

        # Classic clients send x-api-key; the installed anthropic SDK (2.x) sends its api_key
        # as "Authorization: Bearer <key>". Either one counts as a credential.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not (request.headers.get("x-api-key") or bearer):
            return error(401, "authentication_error", "x-api-key header is required")
        reply = self._next("anthropic")
        if isinstance(reply, Raw):
            return reply.response()
        model = str(body.get("model", ""))
        if reply.error is not None and reply.error_after is None:
            status, kind, text = _ANTHROPIC_ERRORS[reply.error]
            headers.update(_retry_after(reply))
            return error(status, kind, reply.message or text.format(model=model))

        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        stop_reason = FINISH["anthropic"][reply.finish]
        usage_in = {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if not body.get("stream"):
            full = {
                **message,
                "content": [{"type": "text", "text": reply.text}],
                "stop_reason": stop_reason,
                "usage": {**usage_in, "output_tokens": reply.out_tokens()},
            }
            if reply.drop_after is not None:
                return _truncated(full, headers)
            return JSONResponse(full, headers=headers)

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {_dumps({'type': name, **data})}\n\n".encode()

        pieces = reply.pieces()
        drop = reply.drop_after is not None
        if reply.drop_after is not None:
            pieces = pieces[: reply.drop_after]
        head = [
            event(
                "message_start", {"message": {**message, "usage": {**usage_in, "output_tokens": 1}}}
            ),
            event(
                "content_block_start",
                {"index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            event("ping", {}),
        ]
        texts = [
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
            for p in pieces
        ]
        tail = [
            event("content_block_stop", {"index": 0}),
            event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": reply.out_tokens()},
                },
            ),
            event("message_stop", {}),
        ]
        if reply.error is not None and reply.error_after is not None:
            _, kind, text = _ANTHROPIC_ERRORS[reply.error]
            texts = texts[: reply.error_after]
            tail = [event("error", {"error": {"type": kind, "message": reply.message or text}})]
        return _Frames(
            head,
            texts,
            tail,
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
            delay_s=reply.delay_s,
            drop=drop,
            keepalive=event("ping", {}),
        )

    # OpenAI Chat Completions

    async def _openai(self, request: Request) -> Response:
        body = await self._record("openai", request)
        headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}

        def error(status: int, kind: str, code: str | None, message: str) -> Response:
            payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
            return JSONResponse(payload, status_code=status, headers=headers)

        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            return error(
                401,
                "invalid_request_error",
                None,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        reply = self._next("openai")
        if isinstance(reply, Raw):
            return reply.response()
        model = str(body.get("model", ""))
        if reply.error is not None and reply.error_after is None:
            status, kind, code, message = _OPENAI_ERRORS[reply.error]
            headers.update(_retry_after(reply))
            return error(status, kind, code, reply.message or message.format(model=model))

        completion_id = f"chatcmpl-{uuid.uuid4().hex[:29]}"
        created = int(time.time())
        finish = FINISH["openai"][reply.finish]
        usage = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.out_tokens(),
            "total_tokens": reply.input_tokens + reply.out_tokens(),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        common = {"id": completion_id, "created": created, "model": model}
        common |= {"system_fingerprint": "fp_fake", "service_tier": "default"}
        if not body.get("stream"):
            full = {
                **common,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": reply.text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
            if reply.drop_after is not None:
                return _truncated(full, headers)
            return JSONResponse(full, headers=headers)

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            data: dict[str, Any] = {
                **common,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                data["usage"] = None  # every chunk carries it; only the last one fills it
            return f"data: {_dumps(data)}\n\n".encode()

        pieces = reply.pieces()
        drop = reply.drop_after is not None
        if reply.drop_after is not None:
            pieces = pieces[: reply.drop_after]
        # Like the real API: a role-only first chunk, content chunks, then an empty delta
        # carrying finish_reason, then (if asked) a usage chunk with no choices.
        head = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        texts = [chunk({"content": p}, None) for p in pieces]
        tail = [chunk({}, finish)]
        if include_usage:
            last = {**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            tail.append(f"data: {_dumps(last)}\n\n".encode())
        tail.append(b"data: [DONE]\n\n")
        if reply.error is not None and reply.error_after is not None:
            _, kind, code, message = _OPENAI_ERRORS[reply.error]
            texts = texts[: reply.error_after]
            failed = {
                "message": reply.message or message,
                "type": kind,
                "param": None,
                "code": code,
            }
            tail = [f"data: {_dumps({'error': failed})}\n\n".encode()]
        return _Frames(
            head,
            texts,
            tail,
            media_type="text/event-stream",
            headers=headers,
            delay_s=reply.delay_s,
            drop=drop,
        )

    # Google Gemini (generativelanguage.googleapis.com)

    async def _google(self, request: Request) -> Response:
        target = request.path_params["target"]
        version = request.path_params["version"]
        model, _, method = str(target).partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return JSONResponse(
                {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}},
                status_code=404,
            )
        await self._record("google", request)

        def error(status: int, kind: str, message: str, details: Sequence[Any] = ()) -> Response:
            inner = {"code": status, "message": message, "status": kind}
            payload = {"error": {**inner, "details": list(details)} if details else inner}
            return JSONResponse(payload, status_code=status)

        if not (request.headers.get("x-goog-api-key") or request.query_params.get("key")):
            return error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        reply = self._next("google")
        if isinstance(reply, Raw):
            return reply.response()
        if reply.error is not None:
            status, kind, message = _GOOGLE_ERRORS[reply.error]
            text = reply.message or message.format(model=model, version=version)
            return error(status, kind, text, _google_details(reply, model))

        response_id = uuid.uuid4().hex[:22]
        finish = FINISH["google"][reply.finish]

        def payload(text: str, *, final: bool) -> dict[str, Any]:
            candidate: dict[str, Any] = {
                "content": {"parts": [{"text": text}], "role": "model"},
                "index": 0,
            }
            usage: dict[str, Any] = {
                "promptTokenCount": reply.input_tokens,
                "totalTokenCount": reply.input_tokens,
            }
            if final:
                candidate["finishReason"] = finish
                usage["candidatesTokenCount"] = reply.out_tokens()
                usage["totalTokenCount"] = reply.input_tokens + reply.out_tokens()
            return {
                "candidates": [candidate],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": response_id,
            }

        if method == "generateContent":
            full = payload(reply.text, final=True)
            if reply.drop_after is not None:
                return _truncated(full, {})
            return JSONResponse(full)

        def sse(data: dict[str, Any]) -> bytes:
            return f"data: {_dumps(data)}\r\n\r\n".encode()

        # Gemini puts finishReason and the full usage on the chunk with the last text.
        pieces = reply.pieces() or [""]
        if reply.drop_after is not None:
            texts = [sse(payload(p, final=False)) for p in pieces[: reply.drop_after]]
        else:
            texts = [sse(payload(p, final=i == len(pieces) - 1)) for i, p in enumerate(pieces)]
        return _Frames(
            [],
            texts,
            [],
            media_type="text/event-stream",
            headers={},
            delay_s=reply.delay_s,
            drop=reply.drop_after is not None,
        )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        # Leave pytest's SIGINT/SIGTERM handlers alone; the test owns the process.
        yield


@contextlib.asynccontextmanager
async def fake_providers() -> AsyncIterator[FakeProviders]:
    fake = FakeProviders()
    # Bind first and hand the socket over, so there is no window for another process to
    # take the port between choosing and listening.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        fake.app,
        http="h11",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises the start-up error
                raise RuntimeError("fake provider server exited during start-up")
            await asyncio.sleep(0.005)
        fake.base_url = f"http://127.0.0.1:{port}"
        yield fake
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        finally:
            sock.close()


__all__ = [
    "FINISH",
    "PROVIDERS",
    "FakeProviders",
    "Raw",
    "Recorded",
    "Reply",
    "fake_providers",
]
