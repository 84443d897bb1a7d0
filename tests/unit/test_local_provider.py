"""The local provider: deterministic, streams its output in pieces, truncates visibly."""

from __future__ import annotations

from typing import Any

import pytest

from nyxflow.errors import InvalidArgument
from nyxflow_engine.providers.base import (
    FINISH_MAX_TOKENS,
    FINISH_STOP,
    CompletionRequest,
    ProviderError,
)
from nyxflow_engine.providers.local import LocalProvider


async def complete(
    prompt: str = "write about leases", max_tokens: int = 1000, **params: Any
) -> tuple[str, str, int, int, str, list[str]]:
    """(text, finish_reason, input_tokens, output_tokens, served_by, deltas)."""
    deltas: list[str] = []

    async def on_delta(piece: str) -> None:
        deltas.append(piece)

    request = CompletionRequest(prompt=prompt, model="", max_tokens=max_tokens, params=params)
    done = await LocalProvider().complete(request, on_delta)
    return (
        done.text,
        done.finish_reason,
        done.input_tokens,
        done.output_tokens,
        done.served_by,
        deltas,
    )


async def test_output_is_deterministic_per_prompt() -> None:
    first = await complete("explain fencing tokens", tokens=20)
    again = await complete("explain fencing tokens", tokens=20)
    other = await complete("explain something else", tokens=20)
    assert first == again
    assert first[0] != other[0]


async def test_streams_exactly_the_requested_tokens_and_the_deltas_make_the_text() -> None:
    text, finish, input_tokens, output_tokens, served_by, deltas = await complete(
        "four words of prompt", tokens=12
    )
    assert len(deltas) == output_tokens == 12 and len(text.split()) == 12
    assert "".join(deltas) == text
    assert finish == FINISH_STOP
    assert input_tokens == 4
    assert served_by == "local:echo"


async def test_system_prompt_counts_as_input_and_model_names_the_server() -> None:
    request = CompletionRequest(
        prompt="one two", model="tiny", max_tokens=100, system="you are terse", params={}
    )

    async def ignore(_: str) -> None:
        return None

    done = await LocalProvider().complete(request, ignore)
    assert done.input_tokens == 5 and done.served_by == "local:tiny"
    assert done.output_tokens == 64  # the default


@pytest.mark.parametrize("items", [1, 3, 7])
async def test_items_make_that_many_headings(items: int) -> None:
    text, finish, *_ = await complete(items=items)
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(headings) == items
    assert [h.split(":")[0] for h in headings] == [f"## Item {i + 1}" for i in range(items)]
    assert finish == FINISH_STOP


async def test_items_are_streamed_in_at_most_tokens_pieces() -> None:
    text, _, _, output_tokens, _, deltas = await complete(items=4, tokens=10)
    assert 1 < len(deltas) <= 10 and output_tokens == len(deltas)
    assert "".join(deltas) == text


async def test_stopping_at_max_tokens_is_marked_truncated() -> None:
    full, *_ = await complete(tokens=30)
    text, finish, _, output_tokens, _, deltas = await complete(tokens=30, max_tokens=8)
    assert finish == FINISH_MAX_TOKENS and output_tokens == 8 and len(deltas) == 8
    assert full.startswith(text) and len(text) < len(full)


async def test_exactly_max_tokens_is_not_truncated() -> None:
    _, finish, _, output_tokens, *_ = await complete(tokens=8, max_tokens=8)
    assert finish == FINISH_STOP and output_tokens == 8


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tokens": "many"}, "params.tokens"),
        ({"tokens": 0}, "params.tokens"),
        ({"tokens": True}, "params.tokens"),
        ({"tokens": 2.5}, "params.tokens"),
        ({"items": -1}, "params.items"),
        ({"token_delay_ms": -5}, "params.token_delay_ms"),
    ],
)
async def test_bad_params_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await complete(**params)
    assert caught.value.field == field


async def test_fail_raises_a_provider_error_before_streaming() -> None:
    deltas: list[str] = []

    async def on_delta(piece: str) -> None:
        deltas.append(piece)

    request = CompletionRequest(
        prompt="x", model="", max_tokens=10, params={"fail": "credit exhausted"}
    )
    with pytest.raises(ProviderError) as caught:
        await LocalProvider().complete(request, on_delta)
    assert caught.value.message == "credit exhausted" and deltas == []


async def run_request(request: CompletionRequest) -> tuple[str, str, list[str]]:
    deltas: list[str] = []

    async def on_delta(piece: str) -> None:
        deltas.append(piece)

    done = await LocalProvider().complete(request, on_delta)
    return done.text, done.finish_reason, deltas


async def test_each_alternative_variant_differs_and_each_is_deterministic() -> None:
    def request(variant: int) -> CompletionRequest:
        return CompletionRequest(
            prompt="same prompt", model="", max_tokens=100, params={"tokens": 16}, variant=variant
        )

    outputs = [(await run_request(request(v)))[0] for v in range(3)]
    assert len(set(outputs)) == 3
    assert (await run_request(request(1)))[0] == outputs[1]


async def test_a_script_is_answered_exactly_in_pieces() -> None:
    script = "line one\nline two\n"
    request = CompletionRequest(
        prompt="x", model="", max_tokens=100, params={"script": script, "tokens": 4}
    )
    text, finish, deltas = await run_request(request)
    assert text == script and finish == FINISH_STOP and 1 < len(deltas) <= 4


async def test_a_continuation_after_max_tokens_completes_the_same_answer() -> None:
    params = {"tokens": 20}
    full, *_ = await run_request(
        CompletionRequest(prompt="long answer", model="", max_tokens=100, params=params)
    )
    cut, finish, _ = await run_request(
        CompletionRequest(prompt="long answer", model="", max_tokens=8, params=params)
    )
    assert finish == FINISH_MAX_TOKENS
    rest, finish, deltas = await run_request(
        CompletionRequest(prompt="long answer", model="", max_tokens=100, params=params, prefix=cut)
    )
    assert finish == FINISH_STOP and len(deltas) == 12
    assert cut + rest == full
