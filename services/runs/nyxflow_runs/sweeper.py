"""The orphan sweeper: fails (or, by the workflow's policy, requeues) runs whose engine
stopped renewing its lease."""

from __future__ import annotations

import asyncio
import logging

from nyxflow import metrics
from nyxflow_runs.store import Store

log = logging.getLogger(__name__)


async def sweep_forever(store: Store, interval_s: float) -> None:
    while True:
        try:
            swept = await store.sweep_orphans_all_tenants()
            metrics.SWEPT.inc(len(swept.failed) + len(swept.requeued))
            metrics.RUNS_FINISHED.labels(status="failed").inc(len(swept.failed))
            metrics.RUNS_REQUEUED.labels(cause="orphaned").inc(len(swept.requeued))
            for run_id in swept.failed:
                log.warning("swept orphaned run", extra={"action": "sweep", "run_id": run_id})
            for run_id in swept.requeued:
                log.warning(
                    "swept orphaned run, requeued for another engine",
                    extra={"action": "requeue", "run_id": run_id},
                )
        except asyncio.CancelledError:
            raise
        except Exception:  # a database hiccup must not kill the loop
            log.exception("sweep failed", extra={"action": "sweep"})
        await asyncio.sleep(interval_s)
