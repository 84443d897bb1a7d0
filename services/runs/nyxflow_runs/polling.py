"""One poller per runs process for its idle watchers: each round reads the last seq and status
of every watched run in one query, so that a quiet watch reads its run only once it moved.

Without it each idle watcher read its run's status and a page of events every poll: a few
thousand watchers kept the process busy with nothing but those reads, and the engines'
heartbeats queued behind them past their lease."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping

from nyxflow.tasks import cancel_and_wait
from nyxflow_runs.store import Store

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (tenant, run)
Marks = Mapping[Key, tuple[int, str]]  # (last seq, status) of each watched run found


class RunPoller:
    """Reads the watched runs every `poll_s` while any is watched. Its task starts with the
    first watch and is cancelled by `close`."""

    def __init__(self, store: Store, poll_s: float) -> None:
        self._store = store
        self.poll_s = poll_s
        self._watched: Counter[Key] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._round = asyncio.Event()  # set when a round ends, then replaced
        self._begun = 0
        self._done = 0
        self._marks: Marks | None = None  # the last round's: None if it failed

    @property
    def begun(self) -> int:
        """The number of rounds begun: a watcher's mark of when its silence started."""
        return self._begun

    def watch(self, tenant_id: str, run_id: str) -> None:
        """Has each round read the run, until as many `unwatch` calls."""
        self._watched[tenant_id, run_id] += 1
        if self._task is None:
            self._task = asyncio.create_task(self._poll_forever(), name="run-poller")

    def unwatch(self, tenant_id: str, run_id: str) -> None:
        key = (tenant_id, run_id)
        self._watched[key] -= 1
        if self._watched[key] <= 0:
            del self._watched[key]

    async def marks_since(self, begun: int) -> Marks | None:
        """The marks of a round begun after round `begun`, waiting for it if none ended yet.
        None if that round failed or none ended within two polls: the watcher reads its run
        itself, so that a poller in trouble slows streams down but never stalls them."""
        try:
            async with asyncio.timeout(2 * self.poll_s):
                while self._done <= begun:
                    await self._round.wait()
        except TimeoutError:
            return None
        return self._marks

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if self._watched:
                await self._poll()

    async def _poll(self) -> None:
        self._begun += 1
        begun = self._begun
        try:
            marks: Marks | None = await self._store.watched_marks(list(self._watched))
        except Exception:  # retried next round; the watchers read for themselves meanwhile
            log.warning("polling the watched runs failed", exc_info=True)
            marks = None
        self._marks, self._done = marks, begun
        self._round.set()
        self._round = asyncio.Event()
