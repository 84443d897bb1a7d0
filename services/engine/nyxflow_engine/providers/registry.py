"""Providers by name, built from the engine's settings, and the chain they run in."""

from __future__ import annotations

from collections.abc import Sequence

from nyxflow.chains import on_model
from nyxflow.errors import InvalidArgument
from nyxflow_engine.providers.anthropic_messages import AnthropicProvider
from nyxflow_engine.providers.base import Completion, CompletionRequest, OnDelta, Provider
from nyxflow_engine.providers.chain import OnFallback, OnReset, RetryPolicy, complete_with_chain
from nyxflow_engine.providers.google_gemini import GoogleProvider
from nyxflow_engine.providers.local import LocalProvider
from nyxflow_engine.providers.openai_chat import OpenAIProvider
from nyxflow_engine.providers.remote import Endpoint
from nyxflow_engine.settings import EngineSettings


class Providers:
    def __init__(
        self,
        providers: Sequence[Provider] | None = None,
        *,
        default_chain: Sequence[str] = ("local",),
        policy: RetryPolicy | None = None,
    ) -> None:
        self._by_name = {p.name: p for p in (providers or [LocalProvider()])}
        self.default_chain = list(default_chain)
        self.policy = policy or RetryPolicy()

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> Providers:
        def endpoint(key_setting: str, base_url: str | None) -> Endpoint:
            return Endpoint(
                api_key=getattr(settings, key_setting),
                base_url=base_url,
                timeout_s=settings.provider_timeout_s,
                env_name=f"NYXFLOW_{key_setting.upper()}",
            )

        return cls(
            [
                LocalProvider(),
                AnthropicProvider(endpoint("anthropic_api_key", settings.anthropic_base_url)),
                OpenAIProvider(endpoint("openai_api_key", settings.openai_base_url)),
                OpenAIProvider(
                    endpoint("openai_compatible_api_key", settings.openai_compatible_base_url),
                    name="openai_compatible",
                ),
                GoogleProvider(endpoint("google_api_key", settings.google_base_url)),
            ],
            default_chain=settings.default_providers,
            policy=RetryPolicy(
                attempts=settings.provider_attempts,
                backoff_s=settings.provider_backoff_s,
                backoff_max_s=settings.provider_backoff_max_s,
                budget_s=settings.provider_budget_s,
                stall_s=settings.provider_timeout_s,
            ),
        )

    def get(self, name: str) -> Provider:
        provider = self._by_name.get(name)
        if provider is None:
            raise InvalidArgument(f"unknown provider {name!r}", field="provider")
        return provider

    async def complete(
        self,
        chain: Sequence[str],
        request: CompletionRequest,
        on_delta: OnDelta,
        *,
        on_fallback: OnFallback,
        on_reset: OnReset,
    ) -> Completion:
        return await complete_with_chain(
            self.get,
            # This engine's default serves the step's own model, as runs' defaults do.
            list(chain) or on_model(self.default_chain, request.model),
            request,
            on_delta,
            policy=self.policy,
            on_fallback=on_fallback,
            on_reset=on_reset,
        )
