"""Resolves a call's credentials to its tenant; API keys are cached briefly."""

from __future__ import annotations

import time

import grpc

from nyxflow import logs
from nyxflow.auth import caller_from_metadata, require_internal
from nyxflow.errors import Unauthenticated
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.store import Store

# How long a key's tenant is trusted without a lookup. A revocation clears every replica's
# cache at once through the bus (Redis); this bounds it when the bus cannot tell them.
KEY_CACHE_S = 5.0


class Tenancy:
    def __init__(self, store: Store, internal_secret: str, bus: LocalBus) -> None:
        self._store = store
        self._secret = internal_secret
        self._bus = bus
        self._keys: dict[str, tuple[str, float]] = {}
        # Counts the revocations: a lookup that began before one may have read the key as
        # valid, and must not put it back in the cache the revocation has just cleared.
        self._revocations = 0
        bus.on_keys_revoked(self.forget_keys)

    async def tenant_of(self, context: grpc.aio.ServicerContext) -> str:
        caller = caller_from_metadata(context.invocation_metadata() or (), self._secret)
        if caller.tenant_id is not None:
            logs.bind(tenant=caller.tenant_id)
            return caller.tenant_id
        assert caller.api_key is not None
        cached = self._keys.get(caller.api_key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            logs.bind(tenant=cached[0])
            return cached[0]
        revocations = self._revocations
        tenant_id, expires_at = await self._store.tenant_for_key(caller.api_key)
        if len(self._keys) > 10_000:
            self._keys.clear()
        if revocations == self._revocations:
            # Never cached past the key's own expiry.
            left = KEY_CACHE_S if expires_at is None else min(KEY_CACHE_S, expires_at - time.time())
            self._keys[caller.api_key] = (tenant_id, now + left)
        logs.bind(tenant=tenant_id)  # the rest of this call's lines say whose it was
        return tenant_id

    def forget_keys(self) -> None:
        """After a revocation: every key is looked up again on its next use."""
        self._revocations += 1
        self._keys.clear()

    async def key_revoked(self) -> None:
        """Every replica forgets its cached keys: this one at once, the others via the bus."""
        await self._bus.announce_keys_revoked()

    def engine_tenant_of(self, context: grpc.aio.ServicerContext) -> str:
        """The engine's calls (claim, heartbeat, writes) take internal credentials only: a
        tenant's API key may read and steer its runs, never write as their engine."""
        caller = caller_from_metadata(context.invocation_metadata() or (), self._secret)
        if caller.tenant_id is None:
            raise Unauthenticated("engine calls need the internal credentials")
        return caller.tenant_id

    def require_engine(self, context: grpc.aio.ServicerContext) -> None:
        """The engine's calls across tenants (adopting requeued runs): internal only."""
        require_internal(context.invocation_metadata() or (), self._secret)
