"""`nyxflow run show` and `workflow show` of a run whose steps' own outputs are 36 MB in all:
both were RESOURCE_EXHAUSTED (past gRPC's 32 MiB); the whole read leaves the outputs past its
budget out, and --json fills them in step by step, so that every step comes with its output
and alternatives as before."""

from __future__ import annotations

import json

import httpx

from tests.e2e.test_cli import cli
from tests.support.big_steps import big_steps_run, left_out, whole
from tests.support.processes import ProcessStack


async def test_show_gives_every_step_whole(http: httpx.AsyncClient, stack: ProcessStack) -> None:
    run = await big_steps_run(http, stack)
    left_out(run["steps"])

    shown = cli(stack, "run", "show", run["id"])
    assert shown.returncode == 0, shown.stderr
    assert "Last" in shown.stdout and "completed" in shown.stdout
    for args in (["run", "show", run["id"]], ["workflow", "show", run["workflow_id"]]):
        shown = cli(stack, *args, "--json")
        assert shown.returncode == 0, shown.stderr
        steps = json.loads(shown.stdout)["steps"]
        assert [s["id"] for s in steps] == [s["id"] for s in run["steps"]], args
        whole(steps)
