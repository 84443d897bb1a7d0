"""Providers by name."""

from __future__ import annotations

from nyxflow.errors import InvalidArgument
from nyxflow_engine.providers.base import Provider
from nyxflow_engine.providers.local import LocalProvider


class Providers:
    def __init__(self, providers: list[Provider] | None = None) -> None:
        self._by_name = {p.name: p for p in (providers or [LocalProvider()])}

    def get(self, name: str) -> Provider:
        provider = self._by_name.get(name)
        if provider is None:
            raise InvalidArgument(f"unknown provider {name!r}", field="provider")
        return provider
