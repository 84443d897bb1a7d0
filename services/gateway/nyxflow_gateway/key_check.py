"""A key checked with runs before a request's body is read.

The routes hand the key to runs with their call, after the body: a key of the right shape but
made up had the gateway read, parse and validate up to the body limit (a 1 MB YAML template
held the event loop for seconds) before its 401. A key runs takes is trusted for
`TRUSTED_S` without asking again, so a tenant's requests cost one check per interval; a
refused one is never kept, and asks again each time (as any call with it would).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from time import monotonic

from nyxflow.errors import NotFound
from nyxflow_gateway.coalesce import Coalescer
from nyxflow_gateway.deps import ServicesByKey
from nyxflow_gateway.hub import KEY_CHECK_S

# No longer than a revoked key's SSE streams go on (the hub's check): a key revoked this long
# ago has no body read. Its calls are refused by runs at once in any case.
TRUSTED_S = KEY_CHECK_S
KEPT_KEYS = 1024  # keys trusted at once; the oldest trusted goes first
# A run id no run has: GetRun resolves the caller's key before it looks, and then reads one
# row by its primary key. NOT_FOUND: the key was taken.
NO_RUN = "00000000-0000-0000-0000-000000000000"


class KeyCheck:
    def __init__(self, services: ServicesByKey) -> None:
        self._services = services
        self._trusted: OrderedDict[str, float] = OrderedDict()  # key -> until (monotonic)
        self._asks = Coalescer[None]()  # a burst of one key's requests asks once

    async def __call__(self, key: str) -> None:
        """Returns if runs takes `key`; raises Unauthenticated if it refuses it, and runs'
        other errors as they come (runs away: Unavailable, the usual 503)."""
        until = self._trusted.get(key)
        if until is not None and until > monotonic():
            return
        await self._asks.get(key, lambda: self._ask(key))

    async def _ask(self, key: str) -> None:
        asked = monotonic()  # trusted from the ask: a revocation after it is seen in time
        with contextlib.suppress(NotFound):  # the key was taken
            await self._services(key).runs.get_run(NO_RUN, brief=True)
        self._trusted[key] = asked + TRUSTED_S
        self._trusted.move_to_end(key)
        while len(self._trusted) > KEPT_KEYS:
            self._trusted.popitem(last=False)
