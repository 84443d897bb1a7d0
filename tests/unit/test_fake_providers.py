"""The fake provider server, driven by the real Anthropic, OpenAI and google-genai SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anthropic
import httpx
import httpx2
import openai
import pytest
import pytest_asyncio
from google import genai
from google.genai import errors as genai_errors

from tests.support.fake_providers import FakeProviders, Reply, fake_providers

# One server for the module: starting uvicorn costs ~0.2 s, and the tests must stay fast.
pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "say something"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[FakeProviders]:
    async with fake_providers() as fake:
        yield fake


@pytest_asyncio.fixture(loop_scope="module")
async def fake(shared: FakeProviders) -> FakeProviders:
    shared.reset()  # a failed test must not leave replies queued for the next one
    return shared


@dataclass
class Streamed:
    texts: list[str] = field(default_factory=list)  # filled as chunks arrive, kept on errors
    finish: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


async def anthropic_stream(base_url: str, out: Streamed) -> None:
    async with anthropic.AsyncAnthropic(api_key="sk-ant", base_url=base_url, max_retries=0) as c:
        stream = await c.messages.create(
            model="claude-test",
            max_tokens=64,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
        )
        async for event in stream:
            if event.type == "message_start":
                out.input_tokens = event.message.usage.input_tokens
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                out.texts.append(event.delta.text)
            elif event.type == "message_delta":
                out.finish = event.delta.stop_reason
                out.output_tokens = event.usage.output_tokens


async def openai_stream(base_url: str, out: Streamed) -> None:
    async with openai.AsyncOpenAI(api_key="sk-oai", base_url=f"{base_url}/v1", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    out.texts.append(choice.delta.content)
                if choice.finish_reason is not None:
                    out.finish = choice.finish_reason
            if chunk.usage is not None:
                out.input_tokens = chunk.usage.prompt_tokens
                out.output_tokens = chunk.usage.completion_tokens


def google_client(base_url: str) -> genai.client.AsyncClient:
    options = genai.types.HttpOptions(base_url=base_url)
    return genai.Client(api_key="g-key", http_options=options).aio


async def google_stream(base_url: str, out: Streamed) -> None:
    async with google_client(base_url) as c:
        stream = await c.models.generate_content_stream(
            model="gemini-test",
            contents=PROMPT,
            config=genai.types.GenerateContentConfig(max_output_tokens=64),
        )
        async for response in stream:
            if response.text:
                out.texts.append(response.text)
            for candidate in response.candidates or []:
                if candidate.finish_reason is not None:
                    out.finish = candidate.finish_reason.value
            if response.usage_metadata is not None:
                out.input_tokens = response.usage_metadata.prompt_token_count
                out.output_tokens = response.usage_metadata.candidates_token_count


STREAMS: dict[str, Callable[[str, Streamed], Awaitable[None]]] = {
    "anthropic": anthropic_stream,
    "openai": openai_stream,
    "google": google_stream,
}


@pytest.mark.parametrize(
    ("provider", "finish", "expected"),
    [
        ("anthropic", "stop", "end_turn"),
        ("anthropic", "max_tokens", "max_tokens"),
        ("openai", "stop", "stop"),
        ("openai", "max_tokens", "length"),
        ("google", "stop", "STOP"),
        ("google", "max_tokens", "MAX_TOKENS"),
    ],
)
async def test_streamed_completion(
    fake: FakeProviders, provider: str, finish: str, expected: str
) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    fake.script(provider, Reply(text=text, chunk=10, finish=finish, input_tokens=7))
    out = Streamed()
    await STREAMS[provider](fake.base_url, out)
    assert "".join(out.texts) == text
    assert len(out.texts) == 5
    assert out.finish == expected
    assert (out.input_tokens, out.output_tokens) == (7, 5)  # output defaults to chunk count
    assert fake.count(provider) == 1


async def test_requests_are_recorded_with_the_sdks_paths_and_credentials(
    fake: FakeProviders,
) -> None:
    fake.script("anthropic", Reply(output_tokens=42))
    for stream in STREAMS.values():
        await stream(fake.base_url, Streamed())
    by_provider = {r.provider: r for r in fake.requests}
    assert [r.provider for r in fake.requests] == ["anthropic", "openai", "google"]

    claude = by_provider["anthropic"]
    assert claude.path == "/v1/messages"
    # anthropic 2.x sends its api_key as a bearer token, not x-api-key.
    assert claude.headers["authorization"] == "Bearer sk-ant"
    assert "anthropic-version" in claude.headers
    assert claude.body["model"] == "claude-test"
    assert claude.body["stream"] is True

    gpt = by_provider["openai"]
    assert gpt.path == "/v1/chat/completions"
    assert gpt.headers["authorization"] == "Bearer sk-oai"
    assert gpt.body["stream_options"] == {"include_usage": True}

    gemini = by_provider["google"]
    # google-genai 3.x defaults to API version v1 (v1beta is also served).
    assert gemini.path == "/v1/models/gemini-test:streamGenerateContent?alt=sse"
    assert gemini.headers["x-goog-api-key"] == "g-key"
    assert gemini.body["contents"][0]["parts"][0]["text"] == PROMPT
    assert gemini.body["generationConfig"]["maxOutputTokens"] == 64


async def test_scripted_output_tokens_and_default_reply(fake: FakeProviders) -> None:
    fake.script("openai", Reply(text="abc", output_tokens=42))
    first, second = Streamed(), Streamed()
    await openai_stream(fake.base_url, first)
    await openai_stream(fake.base_url, second)  # queue empty: Reply() defaults
    assert (first.texts, first.output_tokens) == (["abc"], 42)
    assert ("".join(second.texts), second.finish, second.input_tokens) == (
        "fake answer",
        "stop",
        11,
    )


async def test_non_streamed_completions(fake: FakeProviders) -> None:
    for provider in ("anthropic", "openai", "google"):
        fake.script(provider, Reply(text="whole reply", finish="max_tokens", input_tokens=3))
    async with anthropic.AsyncAnthropic(
        api_key="k", base_url=fake.base_url, max_retries=0
    ) as claude:
        message = await claude.messages.create(
            model="claude-test", max_tokens=5, messages=[{"role": "user", "content": PROMPT}]
        )
    assert message.content[0].type == "text"
    assert message.content[0].text == "whole reply"
    assert message.stop_reason == "max_tokens"
    assert message.usage.input_tokens == 3

    async with openai.AsyncOpenAI(
        api_key="k", base_url=f"{fake.base_url}/v1", max_retries=0
    ) as gpt:
        completion = await gpt.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": PROMPT}]
        )
    assert completion.choices[0].message.content == "whole reply"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 3 + 2

    async with google_client(fake.base_url) as gemini:
        response = await gemini.models.generate_content(model="gemini-test", contents=PROMPT)
    assert response.text == "whole reply"
    assert response.candidates and response.candidates[0].finish_reason == "MAX_TOKENS"
    assert fake.requests[-1].path == "/v1/models/gemini-test:generateContent"


@pytest.mark.parametrize(
    ("provider", "error", "exc_type", "status", "message"),
    [
        (
            "anthropic",
            "credit",
            anthropic.BadRequestError,
            400,
            "Your credit balance is too low to access the Anthropic API.",
        ),
        ("anthropic", "rate_limit", anthropic.RateLimitError, 429, "exceed the rate limit"),
        ("anthropic", "overloaded", anthropic.OverloadedError, 529, "Overloaded"),
        ("openai", "quota", openai.RateLimitError, 429, "You exceeded your current quota"),
        ("openai", "credit", openai.RateLimitError, 429, "You exceeded your current quota"),
        ("openai", "rate_limit", openai.RateLimitError, 429, "Rate limit reached for gpt-test"),
        ("openai", "server", openai.InternalServerError, 500, "The server had an error"),
        ("google", "quota", genai_errors.ClientError, 429, "You exceeded your current quota"),
        ("google", "credit", genai_errors.ClientError, 429, "You exceeded your current quota"),
        ("google", "rate_limit", genai_errors.ClientError, 429, "Resource has been exhausted"),
        ("google", "overloaded", genai_errors.ServerError, 503, "The model is overloaded"),
    ],
)
async def test_errors_raise_the_sdks_own_exceptions(
    fake: FakeProviders,
    provider: str,
    error: str,
    exc_type: type[Exception],
    status: int,
    message: str,
) -> None:
    fake.script(provider, Reply(error=error))
    with pytest.raises(exc_type) as caught:
        await STREAMS[provider](fake.base_url, Streamed())
    exc = caught.value
    if isinstance(exc, anthropic.APIStatusError):
        assert exc.status_code == status
        assert isinstance(exc.body, dict)
        assert exc.body["type"] == "error"
        assert message in exc.body["error"]["message"]
    elif isinstance(exc, openai.APIStatusError):
        assert exc.status_code == status
        assert message in exc.message
        if error in ("quota", "credit"):
            assert (exc.code, exc.type) == ("insufficient_quota", "insufficient_quota")
        if error == "rate_limit":
            assert exc.code == "rate_limit_exceeded"
    else:
        assert isinstance(exc, genai_errors.APIError)
        assert exc.code == status
        assert exc.message is not None and message in exc.message
        assert exc.status == ("UNAVAILABLE" if status == 503 else "RESOURCE_EXHAUSTED")
    assert fake.count(provider) == 1


async def test_custom_error_message(fake: FakeProviders) -> None:
    fake.script("anthropic", Reply(error="invalid", message="prompt is too long"))
    with pytest.raises(anthropic.BadRequestError) as caught:
        await anthropic_stream(fake.base_url, Streamed())
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "prompt is too long",
    }


@pytest.mark.parametrize(
    ("provider", "exc_type"),
    [
        # Releases differ in whether the SDK wraps the transport error in its own
        # APIConnectionError (anthropic began to); the adapters catch both forms.
        ("anthropic", (anthropic.APIConnectionError, httpx2.RemoteProtocolError)),
        ("openai", (openai.APIConnectionError,)),
        ("google", (httpx2.RemoteProtocolError,)),
    ],
)
async def test_dropped_stream_raises(
    fake: FakeProviders, provider: str, exc_type: tuple[type[Exception], ...]
) -> None:
    fake.script(provider, Reply(text="a" * 40, chunk=4, drop_after=2, delay_s=0.001))
    out = Streamed()
    with pytest.raises(exc_type):
        await STREAMS[provider](fake.base_url, out)
    assert out.texts == ["aaaa", "aaaa"]
    assert out.finish is None


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v1/messages", 401, {"type": "authentication_error"}),
        ("/v1/chat/completions", 401, {"type": "invalid_request_error", "code": None}),
        (
            "/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
            403,
            {"code": 403, "status": "PERMISSION_DENIED"},
        ),
    ],
)
async def test_missing_credentials_are_rejected(
    fake: FakeProviders, path: str, status: int, error: dict[str, object]
) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        response = await client.post(path, json={"model": "m", "stream": True})
    assert response.status_code == status
    assert error.items() <= response.json()["error"].items()
    assert fake.requests[-1].path == path  # rejected requests are still recorded
