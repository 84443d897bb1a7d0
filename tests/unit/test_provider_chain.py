"""The chain's retry loop against providers that fail in ways the SDKs do not classify."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nyxflow_engine.providers.base import Completion, CompletionRequest, OnDelta, Provider
from nyxflow_engine.providers.chain import AllProvidersFailed, RetryPolicy, complete_with_chain
from nyxflow_engine.providers.failures import Action, ProviderFailure
from nyxflow_engine.providers.registry import Providers

REQUEST = CompletionRequest(prompt="p", model="", max_tokens=8)
POLICY = RetryPolicy(attempts=3, backoff_s=0.0, backoff_max_s=0.0)


class ChokingProvider:
    """Streams a piece, then raises what an SDK raises on a body it cannot parse."""

    name = "choking"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        self.calls += 1
        await on_delta("Par")
        raise ValueError("Unterminated string starting at: line 1 column 22")


class ServingProvider:
    name = "serving"

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        await on_delta("whole")
        return Completion("whole", "stop", 1, 1, "serving:m")


class OutOfCredit:
    """Says what model it was asked for, then that it cannot serve now."""

    name = "broke"

    def __init__(self) -> None:
        self.models: list[str] = []

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        self.models.append(request.model)
        raise ProviderFailure(Action.NEXT, "broke: credit balance is too low")


class ModelServing(ServingProvider):
    """Serves, and says what model it was asked for."""

    def __init__(self) -> None:
        self.models: list[str] = []

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        self.models.append(request.model)
        return await super().complete(request, on_delta)


class ListenerGone(Exception):
    """Raised by the listener, as a lost lease or a failed write is."""


async def _complete(
    providers: list[Provider], on_delta: OnDelta, request: CompletionRequest = REQUEST
) -> tuple[Completion, list[str]]:
    by_name = {p.name: p for p in providers}
    fallbacks: list[str] = []
    resets: list[str] = []

    async def reset() -> None:
        resets.append("reset")

    completion = await complete_with_chain(
        by_name.__getitem__,
        [p.name for p in providers],
        request,
        on_delta,
        policy=POLICY,
        on_fallback=lambda _from, _to, reason: fallbacks.append(reason),
        on_reset=reset,
        sleep=_no_wait,
    )
    return completion, fallbacks + resets


async def _no_wait(_: float) -> None:
    return None


async def _shown(_: str) -> None:
    return None


async def test_an_sdk_error_is_retried_then_passed_on_with_a_readable_reason() -> None:
    choking = ChokingProvider()

    completion, seen = await _complete([choking, ServingProvider()], _shown)

    assert completion.text == "whole"
    assert choking.calls == POLICY.attempts
    assert seen == ["choking: unexpected response (ValueError)"] + ["reset"] * POLICY.attempts


async def test_an_sdk_error_from_the_only_provider_fails_the_chain_saying_so() -> None:
    with pytest.raises(AllProvidersFailed, match=r"choking: unexpected response \(ValueError\)"):
        await _complete([ChokingProvider()], _shown)


async def test_what_the_listener_raises_goes_up_untouched_and_is_not_retried() -> None:
    choking = ChokingProvider()

    async def gone(_: str) -> None:
        raise ListenerGone("lease lost")

    with pytest.raises(ListenerGone):
        await _complete([choking, ServingProvider()], gone)
    assert choking.calls == 1


async def test_a_fallback_naming_no_model_is_asked_for_its_own_default() -> None:
    """The step's model is its chain's first entry's: a fallback of another vendor naming
    no model serves its own default, never a model name its vendor does not know."""
    first, fallback = OutOfCredit(), ModelServing()

    completion, seen = await _complete([first, fallback], _shown, replace(REQUEST, model="m"))

    assert completion.text == "whole"
    assert seen == ["broke: credit balance is too low"]
    assert (first.models, fallback.models) == (["m"], [""])


@pytest.mark.parametrize(
    ("chain", "model", "served"),
    [
        ([], "b", "local:b"),  # the engine's default serves the step's own model
        ([], "", "local:a"),
        (["local:c"], "b", "local:c"),  # a chain runs resolved is as runs resolved it
    ],
)
async def test_the_engines_default_chain_serves_the_steps_model(
    chain: list[str], model: str, served: str
) -> None:
    providers = Providers(default_chain=["local:a", "anthropic"])
    request = CompletionRequest(prompt="p", model=model, max_tokens=8)

    completion = await providers.complete(
        chain, request, _shown, on_fallback=lambda *_: None, on_reset=_no_wait_reset
    )

    assert completion.served_by == served


async def _no_wait_reset() -> None:
    return None


class Overloaded:
    """Answers 529 overloaded at once, every time (a provider in an outage)."""

    name = "overloaded"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: CompletionRequest, on_delta: OnDelta) -> Completion:
        self.calls += 1
        raise ProviderFailure(Action.RETRY, "overloaded: Overloaded (HTTP 529)", status=529)


def test_the_backoff_of_a_very_late_attempt_is_its_ceiling() -> None:
    """2 ** 1024 does not fit a float: past that many attempts the backoff raised."""
    policy = RetryPolicy(attempts=5000, backoff_s=0.5, backoff_max_s=8.0)
    assert 4.0 <= policy.delay(5000) <= 8.0


async def test_thousands_of_retries_without_backoff_then_the_next_provider_serves() -> None:
    """Retrying hard without pause (attempts >= 1, backoff >= 0 are taken): attempt 1025 was
    an OverflowError that failed the step, and the next provider was never tried."""
    overloaded, serving = Overloaded(), ServingProvider()
    by_name: dict[str, Provider] = {"overloaded": overloaded, "serving": serving}
    completion = await complete_with_chain(
        by_name.__getitem__,
        ["overloaded", "serving"],
        REQUEST,
        _shown,
        policy=RetryPolicy(attempts=2000, backoff_s=0.0, backoff_max_s=0.0, budget_s=600.0),
        on_fallback=lambda *_: None,
        on_reset=_no_reset,
        sleep=_no_wait,
    )
    assert (completion.text, overloaded.calls) == ("whole", 2000)


async def _no_reset() -> None:
    return None
