"""A step's provider chain: retry what is transient, move on from what is not, say why.

Retries back off exponentially with full jitter, bounded both in attempts and in time per
provider. A retry after part of a stream was shown first tells the listener to reset, so the
final output never holds the dropped attempt's text twice. An SDK that chokes on what came
back (a corrupt frame, a proxy's page) is a failure like any other, retried then passed on;
what the listener itself raised (a lost lease, a failed write) goes up untouched.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from nyxflow import metrics
from nyxflow.errors import NyxflowError
from nyxflow_engine.providers.base import (
    Completion,
    CompletionRequest,
    OnDelta,
    Provider,
    ProviderError,
)
from nyxflow_engine.providers.failures import Action, ContextWindowFull, ProviderFailure

log = logging.getLogger(__name__)

OnFallback = Callable[[str, str, str], None]  # from, to, reason
OnReset = Callable[[], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]

# Past this many doublings any backoff is at its ceiling; 2 ** 1024 is an OverflowError.
MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # per provider, the first try included
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    budget_s: float = 120.0  # time per provider, retries and waits included
    # A request that brings no text this long (the first included) is given up and retried.
    # The SDKs' own timeout is per read: a provider's keep-alive pings (Anthropic's `ping`
    # events) reset it, and a stalled answer held its step, and its run, for as long as the
    # connection lasted. 0: no such limit.
    stall_s: float = 300.0

    def delay(self, attempt: int) -> float:
        doublings = min(attempt - 1, MAX_DOUBLINGS)
        ceiling = min(self.backoff_max_s, self.backoff_s * 2**doublings)
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Target:
    provider: str
    model: str

    @classmethod
    def parse(cls, entry: str) -> Target:
        name, _, model = entry.partition(":")
        return cls(name.strip(), model.strip())


class AllProvidersFailed(ProviderError):
    """Every provider of the chain failed; the message lists each one's reason."""


async def complete_with_chain(
    lookup: Callable[[str], Provider],
    chain: Sequence[str],
    request: CompletionRequest,
    on_delta: OnDelta,
    *,
    policy: RetryPolicy,
    on_fallback: OnFallback,
    on_reset: OnReset,
    sleep: Sleep = asyncio.sleep,
) -> Completion:
    reasons: list[str] = []
    too_long: list[bool] = []  # per provider tried: its model's context window refused the prompt
    for i, entry in enumerate(chain):
        target = Target.parse(entry)
        # The step's own model serves where the chain's first entry names none (a step with a
        # model but no provider runs on a default chain); a fallback's model is its entry's.
        model = target.model or (request.model if i == 0 else "")
        try:
            return await _with_retries(
                lookup(target.provider),
                replace(request, model=model),
                on_delta,
                policy=policy,
                on_reset=on_reset,
                sleep=sleep,
            )
        except ProviderFailure as failure:
            # A prompt too long for one model may fit the next one's window (Claude's 200k,
            # Gemini's 1M); any other bad request no provider will do better with.
            if failure.action is Action.FAIL and not failure.context_full:
                raise ProviderError(failure.reason) from None
            too_long.append(failure.context_full)
            reasons.append(failure.reason)
            if i + 1 < len(chain):
                metrics.PROVIDER_FALLBACKS.labels(
                    from_provider=target.provider, to_provider=Target.parse(chain[i + 1]).provider
                ).inc()
                on_fallback(entry, chain[i + 1], failure.reason)
    # Full only when every one said so: one overloaded, or out of credit, might have taken it
    # (and a continuation refused as full is not tried again).
    failed = ContextWindowFull if too_long and all(too_long) else AllProvidersFailed
    raise failed("every provider failed: " + "; ".join(reasons))


async def _with_retries(
    provider: Provider,
    request: CompletionRequest,
    on_delta: OnDelta,
    *,
    policy: RetryPolicy,
    on_reset: OnReset,
    sleep: Sleep,
) -> Completion:
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    stall_s = policy.stall_s
    attempt = 0
    while True:
        attempt += 1
        streamed = False
        listener_error: BaseException | None = None
        timer = asyncio.timeout(stall_s if stall_s > 0 else None)
        # what `tracked` reschedules; dropped at the end of the attempt
        deadline: asyncio.Timeout | None = timer if stall_s > 0 else None
        armed = loop.time()

        async def tracked(text: str) -> None:
            nonlocal streamed, listener_error, armed
            streamed = True
            # Not at every delta, which would cost a timer each. (Called in this pass only.)
            if deadline is not None and (now := loop.time()) - armed > stall_s / 10:  # noqa: B023
                deadline.reschedule(now + stall_s)  # noqa: B023
                armed = now
            try:
                await on_delta(text)
            except BaseException as error:
                listener_error = error
                raise

        try:
            try:
                async with timer:
                    return await provider.complete(request, tracked)
            except NyxflowError:
                raise  # a ProviderFailure classified already, or the project's own refusal
            except Exception as error:
                if error is listener_error:
                    raise
                if isinstance(error, TimeoutError) and timer.expired():
                    raise ProviderFailure(
                        Action.RETRY, f"{provider.name}: no text for {stall_s:g} s (stalled)"
                    ) from None
                # Logged whole: it may as well be a bug of the adapter as a bad body.
                log.warning("%s: unexpected error from the provider", provider.name, exc_info=True)
                raise ProviderFailure(
                    Action.RETRY, f"{provider.name}: unexpected response ({type(error).__name__})"
                ) from error
            finally:
                # Each holds what holds this frame: the listener's error by its traceback, the
                # timer by its task (a cancelled task keeps its error, whose traceback holds
                # this frame). Left here, they keep the execution until a full collection.
                listener_error = None
                deadline = None
                del timer
        except ProviderFailure as failure:
            metrics.PROVIDER_ERRORS.labels(provider=provider.name, action=failure.action).inc()
            if streamed:
                await on_reset()
            if failure.action is not Action.RETRY or attempt >= policy.attempts:
                raise
            # Never sooner than the provider asked; when that is beyond the budget, the next
            # provider is tried now instead of a retry doomed to the same answer.
            delay = max(policy.delay(attempt), failure.retry_after_s or 0.0)
            if time.monotonic() - started + delay > policy.budget_s:
                raise
            await sleep(delay)
