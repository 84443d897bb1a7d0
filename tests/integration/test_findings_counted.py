"""A report's findings are stored as many times as it counts them (two places alike are two
findings), and a step saving them again (resumed, retried) adds none of them twice."""

from __future__ import annotations

import json
from pathlib import Path

from nyxflow import events as ev
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from tests.integration.test_pipelines import execute
from tests.integration.test_runs_invariants import claimed
from tests.support.inprocess import Clients
from tests.support.repos import planted_repo

SAME = {
    "file": "__init__.py",
    "line": 1,
    "severity": "info",
    "category": "style",
    "message": "empty module",
}


async def test_the_stored_findings_are_the_ones_the_report_counts(
    api: Clients, tmp_path: Path
) -> None:
    """Two identical findings in one answer (two places alike) were stored once: the report
    counted two, GET /findings listed one."""
    project = await api.runs.create_project("analysed")
    repository = await api.runs.add_repository(
        project.id, "acme", "shop", str(planted_repo(tmp_path))
    )
    params = {"replies": {'"title": "."': json.dumps([SAME, SAME])}, "script": "[]", "tokens": 4}
    request = runs_pb2.StartPipelineRequest(
        repository_id=repository.id, pipeline="code-analysis", params_json=json.dumps(params)
    )
    run = await api.runs.start_pipeline(request)
    await execute(api, run.id)

    done = await api.runs.get_run(run.id)
    assert done.status == ev.COMPLETED, done.error
    counted = json.loads(next(s.output for s in done.steps if s.name == "Findings"))["count"]
    assert counted == 2 and len(await api.runs.list_findings(run.id)) == 2


async def test_a_step_saving_findings_again_adds_none_of_them_twice(api: Clients) -> None:
    engine, run, token = await claimed(api)
    step_id = run.steps[0].id
    same = pb.Finding(file="a.py", line=1, severity="low", message="alike")
    other = pb.Finding(file="b.py", line=2, severity="high", message="new")
    await engine.save_artifacts(run.id, token, step_id, findings=[same, same])
    await engine.save_artifacts(run.id, token, step_id, findings=[same, same, other])

    stored = await api.runs.list_findings(run.id)
    assert [(f.file, f.message) for f in stored] == [
        ("a.py", "alike"),
        ("a.py", "alike"),
        ("b.py", "new"),
    ]
