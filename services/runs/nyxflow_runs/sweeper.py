"""The orphan sweeper: fails (or, by the workflow's policy, requeues) runs whose engine
stopped renewing its lease."""

from __future__ import annotations

import asyncio
import logging

from nyxflow_runs.store import Store

log = logging.getLogger(__name__)


async def sweep_forever(store: Store, interval_s: float) -> None:
    while True:
        try:
            await store.sweep_orphans_all_tenants()  # it counts and logs what it swept
        except asyncio.CancelledError:
            raise
        except Exception:  # a database hiccup must not kill the loop
            log.exception("sweep failed", extra={"action": "sweep"})
        await asyncio.sleep(interval_s)
