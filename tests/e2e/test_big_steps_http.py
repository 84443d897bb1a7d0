"""A run whose steps' own outputs are 36 MB in all, over the real process stack: the run and
its workflow are read whole (they were RESOURCE_EXHAUSTED, past gRPC's 32 MiB), the steps past
the read's budget with `output: null` and `output_left_out: true`, and GET /v1/steps/{id} gives
each of those whole. Another tenant's step is a 404 there too: test_tenant_walls_http walks
every route."""

from __future__ import annotations

import httpx

from tests.support.big_steps import big_steps_run, left_out, whole
from tests.support.processes import ProcessStack


async def test_a_run_past_the_reads_budget_is_read_and_its_steps_whole(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    run = await big_steps_run(http, stack)
    left_out(run["steps"])
    workflow = await http.get(f"/v1/workflows/{run['workflow_id']}", headers=stack.headers)
    assert workflow.status_code == 200, workflow.text
    left_out(workflow.json()["steps"])

    steps = []
    for step in run["steps"]:
        response = await http.get(f"/v1/steps/{step['id']}", headers=stack.headers)
        assert response.status_code == 200, response.text
        steps.append(response.json())
    whole(steps)
    # The same step as the run gave it, but for what the read left out.
    for read, one in zip(run["steps"], steps, strict=True):
        same = {k: v for k, v in one.items() if k not in ("output", "alternatives", "items")}
        assert {k: read[k] for k in same} == {**same, "output_left_out": read["output_left_out"]}


async def test_an_unknown_step_is_a_404(http: httpx.AsyncClient, stack: ProcessStack) -> None:
    for step_id in ("00000000-0000-0000-0000-000000000000", "nope"):
        response = await http.get(f"/v1/steps/{step_id}", headers=stack.headers)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
