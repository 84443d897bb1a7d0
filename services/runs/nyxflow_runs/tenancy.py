"""Resolves a call's credentials to its tenant; API keys are cached briefly."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable

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

    def __init__(
        self,
        api_key: str | None = None,
        expires_by: float | None = None,
        verified_at: float = -math.inf,
    ) -> None:
        self.api_key = api_key  # None: internal credentials, held by nothing
        # Monotonic: the time the database gave the key at its lookup, so one clock (the
        # database's) judges it, not this host's wall clock as well.
        self.expires_by = expires_by
        self.verified_at = verified_at  # monotonic: when the key was last looked up
        self.refused = False  # looked up again after a revocation, and refused
        # Tenancy's: asks for a lookup of a hold verified too long ago (see `check`).
        self.on_stale: Callable[[], None] | None = None

    def check(self) -> None:
        """Raises Unauthenticated once the key is revoked or expired: a comparison and a
        clock read, cheap enough for every batch a stream sends. A hold not looked up for
        KEY_CACHE_S asks for a lookup, made beside the stream: a revocation on a replica the
        bus cannot tell (no Redis) reaches its streams, as it reaches its cache."""
        if self.refused or (self.expires_by is not None and time.monotonic() >= self.expires_by):
            raise Unauthenticated("the API key was revoked or has expired")
        stale = time.monotonic() - self.verified_at >= KEY_CACHE_S
        if stale and self.on_stale is not None:
            self.on_stale()


class Tenancy:
    def __init__(self, store: Store, internal_secret: str, bus: LocalBus) -> None:
        self._store = store
        self._secret = internal_secret
        self._bus = bus
        # key -> (tenant, looked up at, trusted until, expiry or None): all monotonic
        self._keys: dict[str, tuple[str, float, float, float | None]] = {}
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
            hold.on_stale = self._schedule_recheck
            self._holds[hold.api_key].add(hold)
            if revocations != self._revocations:
                hold.verified_at = -math.inf  # revoked while it was looked up, perhaps
                self._schedule_recheck()
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
        if cached is not None and cached[2] > now:
            tenant_id, looked_up, _, expires_by = cached
            logs.bind(tenant=tenant_id)
            return tenant_id, KeyHold(caller.api_key, expires_by, looked_up)
        revocations = self._revocations
        tenant_id, left = await self._store.tenant_for_key(caller.api_key)
        expires_by = None if left is None else now + left
        if len(self._keys) > 10_000:
            self._keys.clear()
        if revocations == self._revocations:
            # Never cached past the key's own expiry.
            trusted = KEY_CACHE_S if left is None else min(KEY_CACHE_S, left)
            self._keys[caller.api_key] = (tenant_id, now, now + trusted, expires_by)
        logs.bind(tenant=tenant_id)  # the rest of this call's lines say whose it was
        return tenant_id, KeyHold(caller.api_key, expires_by, now)

    def forget_keys(self) -> None:
        """After a revocation: every key is looked up again on its next use, and the keys
        that streams hold are looked up now."""
        self._revocations += 1
        self._keys.clear()
        if self._holds:
            for holds in self._holds.values():
                for hold in holds:
                    hold.verified_at = -math.inf
            self._schedule_recheck()

    def _schedule_recheck(self) -> None:
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_holds())
        else:
            self._recheck_again = True  # asked during a pass: the pass again after it

    async def _recheck_holds(self) -> None:
        """Each key whose holds are stale (after a revocation, or KEY_CACHE_S since its last
        lookup) looked up once, however many streams hold it; the holds of a refused one are
        marked so (their streams end at their next batch or silence)."""
        while True:
            self._recheck_again = False
            for api_key in list(self._holds):
                now = time.monotonic()
                if all(now - h.verified_at < KEY_CACHE_S for h in self._holds.get(api_key, ())):
                    continue
                revocations = self._revocations
                try:
                    await self._store.tenant_for_key(api_key)
                except Unauthenticated:
                    for hold in self._holds.get(api_key, ()):
                        hold.refused = True
                    continue
                except Exception as error:  # the database away: looked up again an interval on
                    log.warning("a held key could not be looked up", extra={"error": str(error)})
                if revocations == self._revocations:  # else stale again, and this pass repeats
                    for hold in self._holds.get(api_key, ()):
                        hold.verified_at = max(hold.verified_at, now)
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
