"""A run whose stream grew past the message limit stays claimable: a requeued run's earlier
events (its first engine's, megabytes of text) came whole in the claim's answer, which then
failed after the claim had committed, and the run sat running with no engine."""

from __future__ import annotations

import json

import pytest

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from tests.integration.test_runs_invariants import as_engine
from tests.support.direct import direct
from tests.support.eventually import eventually
from tests.support.inprocess import clients, engine_service, runs_service
from tests.support.workflows import chain

CHUNK = 4 * 2**20
DELTAS = 9  # 36 MiB in all: over the 32 MiB a message may hold


@pytest.mark.timeout(180)
async def test_a_requeued_run_with_a_big_stream_is_claimed_and_followed_whole(
    database_url: str,
) -> None:
    async with (
        runs_service(database_url) as settings,
        engine_service(settings.runs_listen) as engine_settings,
        clients(settings.runs_listen, engine_settings.engine_listen) as api,
        direct(database_url) as db,
    ):
        assert api.engine is not None
        workflow = await api.runs.create_workflow(
            "big-stream", chain(2, tokens=3), on_orphan=ev.ON_ORPHAN_RESUME
        )
        run = await api.runs.create_run(workflow.id)
        first = as_engine(api, run.tenant_id)
        claim = await first.claim_run(run.id, "engine-that-dies", 30.0)
        step_id = claim.run.steps[0].id
        change = runs_pb2.StepChange(status=ev.RUNNING)
        await first.record(
            run.id,
            claim.token,
            [runs_pb2.WriteOp(step=runs_pb2.StepWrite(step_id=step_id, change=change))],
        )
        for i in range(DELTAS):
            text = json.dumps({"step_id": step_id, "text": str(i) * CHUNK})
            delta = pb.EventDraft(type=ev.STEP_DELTA, data_json=text)
            await first.record(run.id, claim.token, [runs_pb2.WriteOp(event=delta)])
        await first.heartbeat(run.id, claim.token, 0.3)  # its last: then it dies
        # Requeued: pending, unless this engine's adopter has taken it (and even finished it)
        # between two looks.
        await eventually(
            lambda: api.runs.get_run(run.id, brief=True),
            lambda r: r.requeues == 1,
            timeout_s=20,
            what="the run requeued",
        )

        events = [e async for e in api.engine.execute(run.id)]

        done = await api.runs.get_run(run.id, brief=True)
        assert done.status == ev.COMPLETED, done.error
        assert [e.seq for e in events] == list(range(1, done.last_seq + 1))
        stored = await db.events(run.tenant_id, run.id)
        assert [(e.seq, e.type, e.data_json) for e in events] == [
            (e.seq, e.type, e.data_json) for e in stored
        ]
        deltas = [json.loads(e.data_json)["text"][0] for e in events if e.type == ev.STEP_DELTA]
        assert deltas[:DELTAS] == [str(i) for i in range(DELTAS)]
