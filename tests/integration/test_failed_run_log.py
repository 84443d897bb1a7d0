"""A failed run leaves a warning an operator finds by its run_id, with its error (a run that
completed was logged, one that failed was not), and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from nyxflow import events as ev
from nyxflow.logs import JsonFormatter
from nyxflow.v1 import common_pb2 as pb
from tests.support.inprocess import API_KEY, SECRET, Clients


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("audit"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_a_failed_run_is_logged_with_its_run_id_and_error(
    api: Clients, json_lines: io.StringIO
) -> None:
    # openai has no key here, and the chain has nothing after it: the step, so the run, fails.
    steps = [pb.StepSpec(name="only", kind="llm", prompt="p", providers=["openai:gpt-4.1"])]
    workflow = await api.runs.create_workflow("fails", steps)
    run = await api.runs.create_run(workflow.id)
    assert api.engine is not None
    [e async for e in api.engine.execute(run.id)]
    failed = await api.runs.get_run(run.id)
    assert failed.status == ev.FAILED and failed.error

    lines = [json.loads(line) for line in json_lines.getvalue().splitlines() if line.strip()]
    text = json_lines.getvalue()
    assert SECRET not in text and API_KEY + '"' not in text
    mine = [line for line in lines if line.get("run_id") == run.id]
    assert any(line.get("level") in ("warning", "error") for line in mine), (
        f"no warning/error line carries run_id {run.id}: {[m['msg'] for m in mine]}"
    )
    assert any(
        "openai" in json.dumps(line) and line.get("level") in ("warning", "error") for line in mine
    ), f"the run's error {failed.error!r} is in no line of run {run.id}"
