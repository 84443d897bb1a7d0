"""Resolves a call's credentials to its tenant; API keys are cached briefly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import grpc

from nyxflow import logs
from nyxflow.auth import caller_from_metadata, require_internal
from nyxflow.errors import Unauthenticated
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.store import Store

log = logging.getLogger(__name__)

# How long a key's tenant is trusted without a lookup. A revocation clears every replica's
# cache at once through the bus (Redis); this bounds it when the bus cannot tell them.
KEY_CACHE_S = 5.0


class KeyHold:
    """A stream's hold on the key it was opened with: a stream outlives the check at its
    start, and must not go on serving a key revoked or expired since."""

    def __init__(self, api_key: str | None = None, expires_at: float | None = None) -> None:
        self.api_key = api_key  # None: internal credentials, held by nothing
        self.expires_at = expires_at  # epoch seconds
        self.refused = False  # looked up again after a revocation, and refused

    def check(self) -> None:
        """Raises Unauthenticated once the key is revoked or expired: a comparison and a
        clock read, cheap enough for every batch a stream sends."""
        if self.refused or (self.expires_at is not None and time.time() >= self.expires_at):
            raise Unauthenticated("the API key was revoked or has expired")


class Tenancy:
    def __init__(self, store: Store, internal_secret: str, bus: LocalBus) -> None:
        self._store = store
        self._secret = internal_secret
        self._bus = bus
        # key -> (tenant, trusted until (monotonic), the key's expiry (epoch s) or None)
        self._keys: dict[str, tuple[str, float, float | None]] = {}
        self._holds: defaultdict[str, set[KeyHold]] = defaultdict(set)  # by key
        self._recheck: asyncio.Task[None] | None = None
        self._recheck_again = False
        # Counts the revocations: a lookup that began before one may have read the key as
        # valid, and must not put it back in the cache the revocation has just cleared.
        self._revocations = 0
        bus.on_keys_revoked(self.forget_keys)

    async def tenant_of(self, context: grpc.aio.ServicerContext) -> str:
        tenant_id, _ = await self._resolve(context)
        return tenant_id

    async def hold_key(self, context: grpc.aio.ServicerContext) -> tuple[str, KeyHold]:
        """The caller's tenant, and a hold on its key for a stream: refused once the key is
        revoked (on any replica) or expires. `release` it when the stream ends."""
        revocations = self._revocations
        tenant_id, hold = await self._resolve(context)
        if hold.api_key is not None:
            self._holds[hold.api_key].add(hold)
            if revocations != self._revocations:
                self._schedule_recheck()  # revoked while it was looked up, perhaps
        return tenant_id, hold

    def release(self, hold: KeyHold) -> None:
        if hold.api_key is not None:
            held = self._holds.get(hold.api_key)
            if held is not None:
                held.discard(hold)
                if not held:
                    del self._holds[hold.api_key]

    async def _resolve(self, context: grpc.aio.ServicerContext) -> tuple[str, KeyHold]:
        caller = caller_from_metadata(context.invocation_metadata() or (), self._secret)
        if caller.tenant_id is not None:
            logs.bind(tenant=caller.tenant_id)
            return caller.tenant_id, KeyHold()
        assert caller.api_key is not None
        cached = self._keys.get(caller.api_key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            logs.bind(tenant=cached[0])
            return cached[0], KeyHold(caller.api_key, cached[2])
        revocations = self._revocations
        tenant_id, expires_at = await self._store.tenant_for_key(caller.api_key)
        if len(self._keys) > 10_000:
            self._keys.clear()
        if revocations == self._revocations:
            # Never cached past the key's own expiry.
            left = KEY_CACHE_S if expires_at is None else min(KEY_CACHE_S, expires_at - time.time())
            self._keys[caller.api_key] = (tenant_id, now + left, expires_at)
        logs.bind(tenant=tenant_id)  # the rest of this call's lines say whose it was
        return tenant_id, KeyHold(caller.api_key, expires_at)

    def forget_keys(self) -> None:
        """After a revocation: every key is looked up again on its next use, and the keys
        that streams hold are looked up now."""
        self._revocations += 1
        self._keys.clear()
        if self._holds:
            self._schedule_recheck()

    def _schedule_recheck(self) -> None:
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_holds())
        else:
            self._recheck_again = True  # a revocation during a pass: the pass again after

    async def _recheck_holds(self) -> None:
        """Each key held by streams looked up once, however many streams hold it; the
        holds of a refused one are marked so (their streams end at their next batch)."""
        while True:
            self._recheck_again = False
            for api_key in list(self._holds):
                try:
                    await self._store.tenant_for_key(api_key)
                except Unauthenticated:
                    for hold in self._holds.get(api_key, ()):
                        hold.refused = True
                except Exception as error:  # the database away: the next revocation retries
                    log.warning("a held key could not be looked up", extra={"error": str(error)})
            if not self._recheck_again:
                return

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
