"""What the store's parts share: sessions, the bus, lookups and the row → proto reads."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import Text, and_, cast, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value

from nyxflow import events as ev
from nyxflow.errors import (
    STALE_TOKEN_PREFIX,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    StaleToken,
)
from nyxflow.personas import BUILTIN_PERSONAS
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs import convert
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.clock import db_now
from nyxflow_runs.models import (
    Base,
    Finding,
    Persona,
    Run,
    RunArtifact,
    RunEvent,
    Step,
    StepItem,
    Tenant,
    Workflow,
)
from nyxflow_runs.scoping import TENANT
from nyxflow_runs.validation import event_data, event_type

if TYPE_CHECKING:
    from nyxflow_runs.store.hot_path import HotPath
    from nyxflow_runs.store.sweeping import Swept

# Everything an execution produced; retry and re-run put a step back to exactly this.
PRISTINE_STEP: dict[str, Any] = {
    "status": ev.PENDING,
    "output": None,
    "error": None,
    "truncated": False,
    "finish_reason": None,
    "input_tokens": 0,
    "output_tokens": 0,
    "served_by": None,
    "selected_index": 0,
    "alternatives_out": [],
    "started_at": None,
    "finished_at": None,
}


# A whole read (GetRun, GetWorkflow, the claim's answer) stays under the 32 MiB gRPC message
# limit however big its steps' outputs and a fan-out's items are, though each one's write is
# well under it. The steps' own outputs (output and alternatives) go in, in step order, up to
# STEP_OUTPUTS_PER_READ bytes in all; the steps past it come without them (Step.output_left_out),
# which GetStep serves whole. Item outputs go in up to ITEM_OUTPUTS_PER_READ bytes in all, and
# no further than the steps' outputs carried leave of READ_OUTPUTS; the rest come without their
# output (StepItem.output_left_out), which ListStepItems serves page by page.
STEP_OUTPUTS_PER_READ = 20 * 2**20
ITEM_OUTPUTS_PER_READ = 8 * 2**20
READ_OUTPUTS = 28 * 2**20

# A whole read lists a fan-out's items from the first (in step order, then index order), at
# most ITEMS_PER_READ of them in all, and no further than their headings, hashes and served_by
# (ITEM_OVERHEAD more each) fit in ITEM_LISTING_PER_READ bytes: each step counts the items it
# leaves unlisted (Step.items_left_out), which ListStepItems serves. Listed whole, 100,000
# items' headings and hashes made a read of 38 MB, past the message limit.
ITEMS_PER_READ = 10_000
ITEM_LISTING_PER_READ = 2 * 2**20
ITEM_OVERHEAD = 32


# The claim's answer hands back the run's stream so far (for Execute's caller) beside the run:
# its events from the first, as many as fit in what the run leaves of the message, at most
# EVENTS_PER_CLAIM; a requeued run's tens of megabytes of events failed the answer after the
# claim had committed. Each event weighs its data and about EVENT_OVERHEAD more.
EVENTS_PER_CLAIM = 8 * 2**20
CLAIM_ROOM = 31 * 2**20
EVENT_OVERHEAD = 64


def events_budget(run: pb.Run) -> int:
    """The bytes of earlier events a claim's answer carries beside `run`."""
    return max(0, min(EVENTS_PER_CLAIM, CLAIM_ROOM - run.ByteSize()))


def item_budget(produced: int) -> int:
    """The bytes of item output a whole read carries, `produced` being its steps' own outputs."""
    return max(0, min(ITEM_OUTPUTS_PER_READ, READ_OUTPUTS - produced))


def listed_items(rows: Iterable[Any], budget: int) -> tuple[dict[str, int], dict[str, int]]:
    """Of the items' (step_id, item_index, listing bytes, output bytes) in read order: step id
    → the last index a whole read lists (ITEMS_PER_READ, ITEM_LISTING_PER_READ), and → the last
    whose output it carries, within `budget` bytes of output (`item_budget`)."""
    listed: dict[str, int] = {}
    carried: dict[str, int] = {}
    listing, left = ITEM_LISTING_PER_READ, budget
    for count, row in enumerate(rows):
        listing -= row.listing + ITEM_OVERHEAD
        if count >= ITEMS_PER_READ or listing < 0:
            break
        listed[row.step_id] = row.item_index
        # Outputs in order until one does not fit: the rest of the listed come without.
        if left >= 0 and row.size <= left:
            left -= row.size
            carried[row.step_id] = row.item_index
        else:
            left = -1
    return listed, carried


def answerable(run: pb.Run) -> pb.Run:
    """`run`, if a claim's answer can carry it; else RESOURCE_EXHAUSTED, raised before the
    claim commits so that a run is never left `running` with no engine told it won."""
    if run.ByteSize() > CLAIM_ROOM:
        raise ResourceExhausted(
            f"run {run.id} reads as {run.ByteSize()} bytes, more than a claim's answer carries"
            f" ({CLAIM_ROOM}); it was not started"
        )
    return run


def with_items_left_out(step: pb.Step, count: int) -> pb.Step:
    """`step`, saying how many of its items a whole read left unlisted (`listed_items`)."""
    step.items_left_out = count
    return step


def produced_bytes(step: Step) -> int:
    """What a step's output and alternatives weigh in a read."""
    alternatives = step.alternatives_out or []
    texts = [step.output or "", *(str(a.get("output", "")) for a in alternatives)]
    return sum(len(t.encode()) for t in texts)


def carried_steps(sizes: Sequence[tuple[str, int]]) -> tuple[set[str], int]:
    """Of the steps' (id, produced bytes) in step order: the ids whose outputs a whole read
    carries (a prefix, up to STEP_OUTPUTS_PER_READ), and the bytes those weigh."""
    carried: set[str] = set()
    total = 0
    for step_id, size in sizes:
        if total + size > STEP_OUTPUTS_PER_READ:
            break
        total += size
        carried.add(step_id)
    return carried, total


@dataclass(frozen=True)
class Draft:
    """An event to persist: its seq is assigned by the write that stores it."""

    type: str
    data: dict[str, Any]
    raw: str = ""  # `data` as the writer sent it, once validated: stored without a re-dump

    @property
    def text(self) -> str:
        return self.raw or json.dumps(self.data)

    @classmethod
    def from_pb(cls, drafts: Sequence[pb.EventDraft], at: str = "") -> list[Draft]:
        """Validated drafts; `at` names a single draft's field, else `events[i]`."""
        return [
            cls(
                event_type(d.type, f"{at or f'events[{i}]'}.type"),
                event_data(d.data_json, f"{at or f'events[{i}]'}.data_json"),
                d.data_json,
            )
            for i, d in enumerate(drafts)
        ]


@dataclass(frozen=True)
class Claim:
    won: bool
    token: int
    run: pb.Run
    events: list[pb.RunEvent]
    earlier_left_out: bool = False  # events before the start past the answer's budget


def started_data(owner: str, claim_id: str) -> dict[str, Any]:
    """run_started's data: who claimed the run, and in which attempt (a retried claim whose
    first answer was lost finds its own attempt here)."""
    return {"owner": owner, "claim": claim_id} if claim_id else {"owner": owner}


def generated_block(steps: Sequence[Step], step: Step) -> list[Step]:
    """The steps `step` generated (`steps` in order): the auto-generated ones right after it."""
    block: list[Step] = []
    for later in steps:
        if later.position <= step.position:
            continue
        if not later.auto_generated:
            break
        block.append(later)
    return block


def _copy(row: Base, run_id: str) -> Base:
    """The row again, as `run_id`'s, with an id and a time of its own."""
    values = {
        c.key: getattr(row, c.key)
        for c in row.__table__.columns
        if c.key not in ("id", "created_at")
    }
    return type(row)(**{**values, "run_id": run_id})


class StoreBase:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], bus: LocalBus, timeout_s: float = 0.0
    ) -> None:
        """`timeout_s`: how long a query on the hot path may go unanswered (0: for ever), as
        the sessions' engine was given (db.create_engine)."""
        self._sessions = sessions
        self._bus = bus
        self._timeout_s = timeout_s

    @functools.cached_property
    def _hot(self) -> HotPath | None:
        """asyncpg directly for the engine's hot path, on PostgreSQL (hot_path.py)."""
        from nyxflow_runs.store.hot_path import HotPath  # it builds on this module

        return HotPath.of(self._sessions.kw.get("bind"), self._timeout_s)

    async def close(self) -> None:
        """Close the hot path's pool, if it was opened (the engine is the caller's to dispose)."""
        hot = self.__dict__.get("_hot")
        if hot is not None:
            await hot.close()

    @contextlib.asynccontextmanager
    async def _scoped(self, tenant_id: str, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session that sees only `tenant_id`'s rows (scoping.py); `write` wraps it in a
        transaction. Only lookups that must cross tenants (keys, the sweeper, admin) use
        `self._sessions` directly."""
        async with self._sessions(info={TENANT: tenant_id}) as session:
            if not write:
                yield session
                return
            async with session.begin():
                yield session

    async def sweep_orphans_all_tenants(self, workflow_id: str | None = None) -> Swept:
        raise NotImplementedError  # the Sweeping part provides it

    # --- lookups, always by tenant ---------------------------------------------------

    @staticmethod
    async def _workflow(
        session: AsyncSession, tenant_id: str, workflow_id: str, *, lock: bool = False
    ) -> Workflow:
        """`lock`: hold the workflow's row until the transaction ends, so that operations on
        one workflow (retry, re-run, resume, delete) go one after another. Run at once, two
        would reset the same steps: a deadlock, or one editing a step the other deleted."""
        query = select(Workflow).where(Workflow.id == workflow_id, Workflow.tenant_id == tenant_id)
        workflow = await session.scalar(query.with_for_update() if lock else query)
        if workflow is None:
            raise NotFound(f"workflow {workflow_id} not found")
        return workflow

    @staticmethod
    async def _run(session: AsyncSession, tenant_id: str, run_id: str) -> Run:
        run = await session.scalar(select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id))
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run

    @staticmethod
    async def _step(session: AsyncSession, tenant_id: str, step_id: str) -> Step:
        step = await session.scalar(
            select(Step).where(Step.id == step_id, Step.tenant_id == tenant_id)
        )
        if step is None:
            raise NotFound(f"step {step_id} not found", field="step_id")
        return step

    @staticmethod
    async def _steps(session: AsyncSession, workflow_id: str, brief: bool = False) -> list[Step]:
        """`brief`: without what they produced, which is not read (up to megabytes each)."""
        query = select(Step).where(Step.workflow_id == workflow_id).order_by(Step.position)
        if brief:
            query = query.options(defer(Step.output), defer(Step.alternatives_out))
        rows = await session.scalars(query)
        return list(rows.all())

    @staticmethod
    async def _something_to_run(
        session: AsyncSession, previous: Run | None, workflow_id: str
    ) -> None:
        """A new run of a workflow whose every step is completed would execute nothing and
        read `completed`: it passed for work done. (A first run always has work, and so has
        a completed synthesis whose steps are still to generate: another alternative chosen
        dropped them, or the engine stopped in between.)"""
        if previous is None:
            return
        left = select(Step.id).where(Step.workflow_id == workflow_id, Step.status != ev.COMPLETED)
        if await session.scalar(left.limit(1)) is not None:
            return
        steps = await StoreBase._steps(session, workflow_id, brief=True)
        if not any(
            (s.config or {}).get("generates") and not generated_block(steps, s) for s in steps
        ):
            raise FailedPrecondition(
                f"workflow {workflow_id} has every step completed: nothing to run "
                "(a re-run runs every step again)"
            )

    @staticmethod
    async def _active_run(session: AsyncSession, workflow_id: str) -> Run | None:
        return await session.scalar(
            select(Run).where(
                Run.workflow_id == workflow_id, Run.status.in_(ev.ACTIVE_RUN_STATUSES)
            )
        )

    async def _require_idle(self, session: AsyncSession, workflow_id: str) -> None:
        active = await self._active_run(session, workflow_id)
        if active is not None:
            raise FailedPrecondition(
                f"workflow {workflow_id} has an active run {active.id} ({active.status})"
            )

    async def _lost_race(self, tenant_id: str, workflow_id: str) -> FailedPrecondition:
        """Another request's run took the workflow's one active place first: name that run,
        so the caller can follow it rather than guess."""
        async with self._scoped(tenant_id) as session:
            try:
                await self._require_idle(session, workflow_id)
            except FailedPrecondition as refusal:
                return refusal
        # It has ended already: trying again would succeed.
        return FailedPrecondition(f"workflow {workflow_id} had an active run; try again")

    @staticmethod
    async def _carry_results(
        session: AsyncSession, tenant_id: str, previous: Run | None, run: Run
    ) -> None:
        """The new run will not execute the steps still completed: what they saved (a
        pipeline's findings, its artifacts) goes on as this run's too, or a retried report
        would leave a run that lists no findings. Reset steps' results stay behind."""
        if previous is None:
            return
        kept = select(Step.id).where(
            Step.workflow_id == run.workflow_id, Step.status == ev.COMPLETED
        )
        artifacts = await session.scalars(
            select(RunArtifact).where(
                RunArtifact.run_id == previous.id, RunArtifact.step_id.in_(kept)
            )
        )
        findings = await session.scalars(
            select(Finding).where(Finding.run_id == previous.id, Finding.step_id.in_(kept))
        )
        session.add_all(_copy(row, run.id) for row in [*artifacts.all(), *findings.all()])

    @staticmethod
    async def _latest_run(session: AsyncSession, workflow_id: str) -> Run | None:
        return await session.scalar(
            select(Run)
            .where(Run.workflow_id == workflow_id)
            .order_by(Run.created_at.desc(), Run.id.desc())
            .limit(1)
        )

    @staticmethod
    async def _personas(session: AsyncSession, tenant_id: str) -> dict[str, str]:
        """Persona name → system prompt: the built-ins, shadowed by the tenant's own."""
        prompts = {name: p.system_prompt for name, p in BUILTIN_PERSONAS.items()}
        rows = await session.execute(
            select(Persona.name, Persona.system_prompt).where(Persona.tenant_id == tenant_id)
        )
        prompts.update({row.name: row.system_prompt for row in rows})
        return prompts

    # --- reads that build protos -------------------------------------------------------

    async def _steps_pb(
        self,
        session: AsyncSession,
        tenant_id: str,
        steps: Sequence[Step],
        brief: bool = False,
        left_out: Collection[str] = frozenset(),
        produced: int | None = None,
        listed: bool = False,
    ) -> list[pb.Step]:
        """`left_out`: the steps whose outputs a whole read leaves out (their columns were not
        loaded); `produced`: what the outputs it carries weigh, counted from `steps` if None;
        `listed`: brief, without their prompts (not loaded either; convert.step)."""
        items: dict[str, list[Any]] = {}
        unlisted: dict[str, int] = {}
        if steps and not brief:
            if produced is None:
                produced = sum(produced_bytes(s) for s in steps)
            items, unlisted = await self._items(session, steps, produced)
        # A listed step carries no system prompt: its persona's are not read for it.
        personas = {} if listed else await self._personas(session, tenant_id)
        defaults = await self._default_chains(session, {s.workflow_id for s in steps})
        return [
            with_items_left_out(
                convert.step(
                    s,
                    items.get(s.id, ()),
                    personas.get(s.persona, ""),
                    defaults.get(s.workflow_id, ()),
                    brief,
                    left_out=s.id in left_out,
                    listed=listed,
                ),
                unlisted.get(s.id, 0),
            )
            for s in steps
        ]

    @staticmethod
    async def _events_from_start(
        session: AsyncSession, run_id: str, below: int, budget: int
    ) -> tuple[list[pb.RunEvent], bool]:
        """The run's events before seq `below`, from the first, as many as `budget` bytes
        hold, and whether any were left out. The sizes are read first: events left out are
        never loaded."""
        from nyxflow_runs.store.workflows import OctetLength  # it builds on this module

        sizes = (
            await session.execute(
                select(RunEvent.seq, OctetLength(cast(RunEvent.data, Text)))
                .where(RunEvent.run_id == run_id, RunEvent.seq < below)
                .order_by(RunEvent.seq)
            )
        ).all()
        last = 0
        for seq, size in sizes:
            budget -= (size or 0) + EVENT_OVERHEAD
            if budget < 0:
                break
            last = seq
        if not last:  # none fits (or there are none): nothing to load
            return [], bool(sizes)
        rows = await session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.seq <= last)
            .order_by(RunEvent.seq)
        )
        return [convert.event(r) for r in rows.all()], bool(sizes) and last < sizes[-1].seq

    @staticmethod
    async def _items(
        session: AsyncSession, steps: Sequence[Step], produced: int
    ) -> tuple[dict[str, list[Any]], dict[str, int]]:
        """Step id → the items a whole read lists (`listed_items`), in order, their outputs
        within the read's budget (`item_budget`, `produced` being what the steps' own outputs
        carried weigh) and None past it; and step id → how many it leaves unlisted. The sizes
        are read first: items and outputs left out are never loaded."""
        from nyxflow_runs.store.workflows import OctetLength  # it builds on this module

        def octets(column: Any) -> Any:
            return func.coalesce(OctetLength(column), 0)

        sizes = (
            await session.execute(
                select(
                    StepItem.step_id,
                    StepItem.item_index,
                    (
                        octets(StepItem.heading)
                        + octets(StepItem.input_hash)
                        + octets(StepItem.served_by)
                    ).label("listing"),
                    octets(StepItem.output).label("size"),
                ).where(StepItem.step_id.in_([s.id for s in steps]))
            )
        ).all()
        by_step: dict[str, list[Any]] = {}
        for row in sizes:
            by_step.setdefault(row.step_id, []).append(row)
        for rows in by_step.values():
            rows.sort(key=lambda row: row.item_index)
        in_order = (row for s in steps for row in by_step.get(s.id, ()))
        listed, carried = listed_items(in_order, item_budget(produced))
        unlisted = {
            step_id: sum(1 for row in rows if row.item_index > listed.get(step_id, -1))
            for step_id, rows in by_step.items()
        }
        return await StoreBase._listed(session, listed, carried), unlisted

    @staticmethod
    async def _listed(
        session: AsyncSession, listed: dict[str, int], carried: dict[str, int]
    ) -> dict[str, list[Any]]:
        """Step id → its items up to index `listed[step id]`, in order, with their outputs up
        to index `carried[step id]` (None past it)."""
        if not listed:
            return {}

        def up_to(last: dict[str, int]) -> Any:
            return or_(
                *(
                    and_(StepItem.step_id == step_id, StepItem.item_index <= index)
                    for step_id, index in last.items()
                )
            )

        rows = (
            await session.execute(
                select(
                    StepItem.step_id,
                    StepItem.item_index,
                    StepItem.heading,
                    StepItem.truncated,
                    StepItem.input_tokens,
                    StepItem.output_tokens,
                    StepItem.input_hash,
                    StepItem.served_by,
                )
                .where(up_to(listed))
                .order_by(StepItem.step_id, StepItem.item_index)
            )
        ).all()
        outputs: dict[tuple[str, int], str] = {}
        if carried:
            loaded = await session.execute(
                select(StepItem.step_id, StepItem.item_index, StepItem.output).where(up_to(carried))
            )
            outputs = {(r.step_id, r.item_index): r.output for r in loaded}
        found: dict[str, list[Any]] = {}
        for row in rows:
            found.setdefault(row.step_id, []).append(
                SimpleNamespace(**row._asdict(), output=outputs.get((row.step_id, row.item_index)))
            )
        return found

    @staticmethod
    async def _default_chains(
        session: AsyncSession, workflow_ids: Collection[str]
    ) -> dict[str, list[str]]:
        """Workflow id → the chain for steps naming none: the workflow's, else the tenant's."""
        if not workflow_ids:
            return {}
        rows = await session.execute(
            select(
                Workflow.id,
                Workflow.default_providers,
                Tenant.default_providers.label("tenant_chain"),
            )
            .join(Tenant, Tenant.id == Workflow.tenant_id)
            .where(Workflow.id.in_(workflow_ids))
        )
        return {row.id: list(row.default_providers or row.tenant_chain or []) for row in rows}

    @staticmethod
    async def _readable_steps(
        session: AsyncSession, workflow_id: str
    ) -> tuple[list[Step], set[str], int]:
        """The workflow's steps for a whole read, the ids of those whose outputs it leaves out
        (`carried_steps`), and what the rest weigh. The sizes are read first: outputs left out
        are never loaded."""
        from nyxflow_runs.store.workflows import OctetLength  # it builds on this module

        sizes = (
            await session.execute(
                select(
                    Step.id,
                    func.coalesce(OctetLength(Step.output), 0)
                    + func.coalesce(OctetLength(cast(Step.alternatives_out, Text)), 0),
                )
                .where(Step.workflow_id == workflow_id)
                .order_by(Step.position)
            )
        ).all()
        carried, produced = carried_steps([(step_id, size) for step_id, size in sizes])
        if len(carried) == len(sizes):
            return await StoreBase._steps(session, workflow_id), set(), produced
        rows = await StoreBase._steps(session, workflow_id, brief=True)
        if carried:
            outputs = await session.execute(
                select(Step.id, Step.output, Step.alternatives_out).where(Step.id.in_(carried))
            )
            by_id = {row.id: row for row in rows}
            for loaded in outputs:
                # As loaded, not as changed: the session must never write them back.
                set_committed_value(by_id[loaded.id], "output", loaded.output)
                set_committed_value(by_id[loaded.id], "alternatives_out", loaded.alternatives_out)
        return rows, {row.id for row in rows if row.id not in carried}, produced

    async def _workflow_pb(
        self, session: AsyncSession, workflow: Workflow, brief: bool = False
    ) -> pb.Workflow:
        if brief:
            rows, left_out, produced = await self._steps(session, workflow.id, brief), set[str](), 0
        else:
            rows, left_out, produced = await self._readable_steps(session, workflow.id)
        steps = await self._steps_pb(session, workflow.tenant_id, rows, brief, left_out, produced)
        latest = await self._latest_run(session, workflow.id)
        return convert.workflow(workflow, steps, latest)

    async def _run_pb(self, session: AsyncSession, run: Run) -> pb.Run:
        rows, left_out, produced = await self._readable_steps(session, run.workflow_id)
        steps = await self._steps_pb(session, run.tenant_id, rows, False, left_out, produced)
        return convert.run(run, steps)

    # --- writes shared by several parts --------------------------------------------------

    @staticmethod
    def _fenced(tenant_id: str, run_id: str, token: int) -> tuple[Any, ...]:
        return (
            Run.id == run_id,
            Run.tenant_id == tenant_id,
            Run.token == token,
            Run.status == ev.RUNNING,
        )

    async def _refuse(self, session: AsyncSession, tenant_id: str, run_id: str) -> NoReturn:
        run = await self._run(session, tenant_id, run_id)  # NotFound if not ours
        raise StaleToken(f"{STALE_TOKEN_PREFIX}: run {run_id} is {run.status}")

    async def _append(
        self, session: AsyncSession, run: Run, drafts: Sequence[Draft]
    ) -> list[pb.RunEvent]:
        """Append to a run this transaction already holds (created or locked)."""
        first = run.last_seq + 1
        run.last_seq += len(drafts)
        await session.flush()
        return await self._insert_events(session, run.tenant_id, run.id, first, drafts)

    @staticmethod
    async def _insert_events(
        session: AsyncSession, tenant_id: str, run_id: str, first_seq: int, drafts: Sequence[Draft]
    ) -> list[pb.RunEvent]:
        if not drafts:
            return []
        rows = await session.scalars(
            insert(RunEvent).returning(RunEvent, sort_by_parameter_order=True),
            [
                {
                    "run_id": run_id,
                    "tenant_id": tenant_id,
                    "seq": first_seq + i,
                    "type": d.type,
                    "data": d.data,
                }
                for i, d in enumerate(drafts)
            ],
        )
        return [convert.event(r) for r in rows.all()]

    @staticmethod
    async def _settle_running_steps(
        session: AsyncSession, workflow_ids: Sequence[str], status: str, error: str
    ) -> None:
        """A finished run leaves no step running: failed or cancelled with the run, or pending
        again (paused) so that resume runs it."""
        if not workflow_ids:
            return
        values: dict[str, Any]
        if status in (ev.FAILED, ev.CANCELLED):
            values = {"status": status, "error": error or f"run {status}", "finished_at": db_now()}
        else:
            values = {"status": ev.PENDING, "started_at": None, "finished_at": None}
        await session.execute(
            update(Step)
            .where(Step.workflow_id.in_(workflow_ids), Step.status == ev.RUNNING)
            .values(**values)
            .execution_options(synchronize_session=False)
        )

    @staticmethod
    async def _reset_steps(session: AsyncSession, steps: Sequence[Step]) -> None:
        """Back to never-executed: every output, usage, item and timestamp cleared."""
        if not steps:
            return
        ids = [s.id for s in steps]
        await session.execute(delete(StepItem).where(StepItem.step_id.in_(ids)))
        await session.execute(
            update(Step)
            .where(Step.id.in_(ids))
            .values(**PRISTINE_STEP)
            .execution_options(synchronize_session=False)
        )
        for step in steps:  # keep the loaded rows true too
            for key, value in PRISTINE_STEP.items():
                setattr(step, key, value)

    async def _delete_generated_after(
        self, session: AsyncSession, workflow_id: str, position: int, last: int | None = None
    ) -> None:
        """Drop auto-generated steps after `position` (up to `last`, if given) and close the
        gaps in `order`."""
        bounds = [Step.position > position]
        if last is not None:
            bounds.append(Step.position <= last)
        await session.execute(
            delete(Step).where(
                Step.workflow_id == workflow_id, Step.auto_generated.is_(True), *bounds
            )
        )
        for index, step in enumerate(await self._steps(session, workflow_id)):
            if step.position != index:
                step.position = index
        await session.flush()
