"""Adopts runs that went back to pending for another engine (the workflow's `on_orphan:
resume`): an orphan the sweeper requeued, or a run a draining replica handed over. Every
replica looks; the claim's compare-and-set gives each run to one of them."""

from __future__ import annotations

import asyncio
import logging
import random

from nyxflow.client import RunsClient
from nyxflow.errors import FailedPrecondition, NotFound, NyxflowError
from nyxflow_engine.executor import Executor

log = logging.getLogger(__name__)

BATCH = 10  # runs looked at per round


async def adopt_forever(executor: Executor, runs: RunsClient, interval_s: float) -> None:
    """Every `interval_s`, and at once again after a full batch of which this replica won
    some: an engine that died holding 200 resumable runs left the last of them pending for
    twenty intervals, ten a round."""
    while True:
        more = False
        try:
            listed, adopted = await adopt_once(executor, runs)
            more = listed == BATCH and bool(adopted)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # runs away for a moment: look again next round
            log.warning("could not look for requeued runs", extra={"error": str(error)})
        if not more:
            await asyncio.sleep(interval_s)


async def adopt_once(executor: Executor, runs: RunsClient) -> tuple[int, list[str]]:
    """Claim what is waiting: how many runs were listed, and the ids this replica won."""
    waiting = await runs.list_requeued_runs(BATCH)
    random.shuffle(waiting)  # replicas looking at once start from different runs
    adopted = []
    for run in waiting:
        try:
            await executor.adopt(run.run_id, run.tenant_id)
        except (FailedPrecondition, NotFound):
            continue  # another replica won it, or it was cancelled meanwhile
        except NyxflowError as error:
            log.warning("could not adopt", extra={"run_id": run.run_id, "error": str(error)})
            continue
        adopted.append(run.run_id)
        log.info("adopted requeued run", extra={"run_id": run.run_id})
    return len(waiting), adopted
