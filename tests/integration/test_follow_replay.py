"""`run follow --json` fills a long output left out of step_completed from the step, but only
while the step still holds the followed run's state: steps hold their workflow's latest run's,
so replaying an older run after a re-run printed the new run's output (here: none) under the
old run's event, and a generated step dropped since stopped the follow with NotFound."""

from __future__ import annotations

from nyxflow import events as ev
from nyxflow.cli import connection
from nyxflow.cli.follow import this_runs_step
from tests.support.inprocess import Clients
from tests.support.workflows import chain

NO_STEP = "00000000-0000-0000-0000-000000000000"


async def test_a_step_is_read_for_its_own_run_only(api: Clients) -> None:
    assert api.engine is not None
    cli = connection.Clients(runs=api.runs, engine=api.engine)
    workflow = await api.runs.create_workflow("replayed", chain(1))
    first = await api.runs.create_run(workflow.id)
    [e async for e in api.engine.execute(first.id)]
    step_id = (await api.runs.get_run(first.id)).steps[0].id

    latest = await this_runs_step(cli, first.id)(step_id)
    assert latest is not None and latest.status == ev.COMPLETED and latest.output

    second = await api.runs.rerun_workflow(workflow.id)  # the steps are the new run's now

    assert await this_runs_step(cli, first.id)(step_id) is None
    assert await this_runs_step(cli, second.id)(step_id) is not None
    assert await this_runs_step(cli, second.id)(NO_STEP) is None
