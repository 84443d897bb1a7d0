"""Code pipelines whose model answers hold what no row or path can: one such answer costs
its own finding's line or its own diff, never the whole step and what the others gave."""

from __future__ import annotations

import json
from pathlib import Path

from nyxflow import events as ev
from nyxflow.v1 import runs_pb2
from tests.integration.test_pipelines import execute
from tests.support.inprocess import Clients
from tests.support.repos import model_replies, planted_repo


async def _run(api: Clients, repo: Path, pipeline: str, replies: dict[str, str]) -> str:
    project = await api.runs.create_project(f"p-{pipeline}")
    repository = await api.runs.add_repository(project.id, "acme", "shop", str(repo))
    params = {"replies": replies, "script": "[]" if pipeline == "code-analysis" else ""}
    request = runs_pb2.StartPipelineRequest(
        repository_id=repository.id, pipeline=pipeline, params_json=json.dumps(params)
    )
    run_id = (await api.runs.start_pipeline(request)).id
    await execute(api, run_id)
    return run_id


async def test_a_finding_with_a_line_past_int32_does_not_fail_the_analysis(
    api: Clients, tmp_path: Path
) -> None:
    """Finding.line is an int32: the Findings step failed, and the run with it."""
    findings = [
        {"file": "calc.py", "line": 4294967296, "severity": "high", "message": "huge line"},
        {"file": "util.py", "line": 2, "severity": "low", "message": "cut emoji \ud83d"},
    ]
    answer = json.dumps(findings)  # ensure_ascii: the lone surrogate as "\ud83d", as models do
    run_id = await _run(api, planted_repo(tmp_path), "code-analysis", {'"title": "."': answer})

    done = await api.runs.get_run(run_id)
    assert done.status == ev.COMPLETED, done.error
    stored = sorted(await api.runs.list_findings(run_id), key=lambda f: f.file)
    assert [(f.file, f.line, f.message) for f in stored] == [
        ("calc.py", 0, "huge line"),
        ("util.py", 2, "cut emoji \ufffd"),
    ]


async def test_one_answer_naming_an_absolute_path_does_not_fail_the_auto_fix(
    api: Clients, tmp_path: Path
) -> None:
    """The diff's name went to `git ls-files`, which exits fatally on a path outside the
    clone: the Review failed, and the good diff of calc.py was lost with it."""
    repo = planted_repo(tmp_path)
    absolute = (
        f"```diff\n--- {repo}/util.py\n+++ {repo}/util.py\n@@ -1,2 +1,2 @@\n def shout(text):\n"
        "-    return text.upper()\n+    return text.upper() + '!!'\n```\n"
    )
    replies = {**model_replies(), '"path": "util.py"': absolute}

    run_id = await _run(api, repo, "auto-fix", replies)

    done = await api.runs.get_run(run_id)
    assert done.status == ev.COMPLETED, done.error
    review = json.loads(next(s.output for s in done.steps if s.name == "Review"))
    assert [e["files"] for e in review["accepted"]] == [["calc.py"]], review
    (rejected,) = review["rejected"]
    assert rejected["reason"].startswith("names no path inside the repository"), rejected
    patch = (await api.runs.get_artifact(run_id, "patch")).content
    assert "+    return a + b" in patch and "util.py" not in patch
