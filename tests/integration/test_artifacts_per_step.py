"""Each step keeps its own artifacts: a workflow with two review steps (one per repository of a
project) offers both patches, the later step's by name and either by its step's id; a step
saving again replaces only its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from nyxflow import events as ev
from nyxflow.errors import InvalidArgument, NotFound
from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs import migrate
from nyxflow_runs.db import create_engine
from tests.integration.test_migrations import ROWS
from tests.integration.test_pipelines import execute
from tests.integration.test_runs_invariants import claimed
from tests.support.databases import fresh_database
from tests.support.inprocess import Clients
from tests.support.repos import GOOD_DIFF, planted_repo

UTIL_DIFF = (
    "```diff\n--- a/util.py\n+++ b/util.py\n@@ -1,2 +1,2 @@\n def shout(text):\n"
    "-    return text.upper()\n+    return text.upper() + '!'\n```\n"
)


def scan_and_review(label: str, repo: Path, diff: str) -> list[pb.StepSpec]:
    """A scan of one repository and a review of the diff given for it."""
    return [
        pb.StepSpec(
            name=f"Scan {label}",
            kind="tool",
            tool="scan_repository",
            params_json=json.dumps({"path": str(repo)}),
        ),
        pb.StepSpec(
            name=f"Review {label}",
            kind="tool",
            tool="review_patches",
            params_json=json.dumps({"path": str(repo), "scanned": True}),
            prompt=f"{{{{ steps.Scan {label}.output }}}}\n\n{diff}",
        ),
    ]


async def two_reviews(api: Clients, tmp_path: Path) -> pb.Run:
    """A workflow reviewing a patch of each of two repositories, run to its end."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = planted_repo(tmp_path / "a"), planted_repo(tmp_path / "b")
    steps = [
        *scan_and_review("A", first, GOOD_DIFF),
        *scan_and_review("B", second, UTIL_DIFF),
    ]
    workflow = await api.runs.create_workflow("two repositories", steps)
    run = await api.runs.create_run(workflow.id)
    await execute(api, run.id)
    done = await api.runs.get_run(run.id)
    assert done.status == ev.COMPLETED, done.error
    return done


async def test_two_review_steps_in_one_workflow_keep_each_its_patch(
    api: Clients, tmp_path: Path
) -> None:
    """The second review's save replaced the first's `patch` and `review`: the first
    repository's accepted diff was nowhere."""
    run = await two_reviews(api, tmp_path)
    scan_a, review_a, _, review_b = run.steps

    latest = await api.runs.get_artifact(run.id, "patch")
    assert latest.step_id == review_b.id and "util.py" in latest.content
    assert "calc.py" not in latest.content
    first = await api.runs.get_artifact(run.id, "patch", step_id=review_a.id)
    assert first.step_id == review_a.id and "calc.py" in first.content
    assert "util.py" not in first.content
    for review in (review_a, review_b):
        report = json.loads((await api.runs.get_artifact(run.id, "review", review.id)).content)
        assert len(report["accepted"]) == 1

    # A step without one is refused naming the field, never answered with another step's.
    with pytest.raises(NotFound, match=review_a.id) as refused:
        await api.runs.get_artifact(run.id, "patch", step_id=scan_a.id)
    assert refused.value.field == "step_id"
    with pytest.raises(NotFound) as missing:
        await api.runs.get_artifact(run.id, "nothing", step_id=review_a.id)
    assert missing.value.field == "name"
    with pytest.raises(InvalidArgument) as wide:
        await api.runs.get_artifact(run.id, "patch", step_id="x" * 37)
    assert wide.value.field == "step_id"


async def test_a_retried_review_keeps_the_other_review_s_patch(
    api: Clients, tmp_path: Path
) -> None:
    run = await two_reviews(api, tmp_path)
    _, review_a, _, review_b = run.steps
    first = await api.runs.get_artifact(run.id, "patch", review_a.id)

    again = await api.runs.retry_step(review_b.id)  # Review A stays completed: carried
    await execute(api, again.id)

    assert (await api.runs.get_run(again.id)).status == ev.COMPLETED
    carried = await api.runs.get_artifact(again.id, "patch", review_a.id)
    assert (carried.content, carried.step_id) == (first.content, first.step_id)
    latest = await api.runs.get_artifact(again.id, "patch")
    assert latest.step_id == review_b.id and "util.py" in latest.content


async def test_a_step_saving_again_replaces_only_its_own_artifact(api: Clients) -> None:
    """A resumed or retried save replaces what the same step stored; another step's of that
    name stays, and by name the later step's is given whichever was saved last."""
    engine, run, token = await claimed(api)
    early, late = run.steps[0].id, run.steps[1].id
    await engine.save_artifacts(run.id, token, late, [pb.Artifact(name="patch", content="late")])
    await engine.save_artifacts(run.id, token, early, [pb.Artifact(name="patch", content="one")])
    await engine.save_artifacts(run.id, token, early, [pb.Artifact(name="patch", content="two")])

    assert (await api.runs.get_artifact(run.id, "patch", early)).content == "two"
    assert (await api.runs.get_artifact(run.id, "patch", late)).content == "late"
    assert (await api.runs.get_artifact(run.id, "patch")).content == "late"


ARTIFACT = (
    "INSERT INTO run_artifacts (id, tenant_id, run_id, step_id, name, media_type, content,"
    " created_at) VALUES (:id, 't', 'r', :step, 'patch', 'text/x-diff', :content, 0)"
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_an_upgrade_keeps_the_artifacts_and_lets_each_step_have_its_own(
    tmp_path: Path, backend: str
) -> None:
    async with fresh_database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine, "0013")
            async with engine.begin() as connection:
                for row in ROWS:
                    await connection.execute(text(row))
                await connection.execute(text(ARTIFACT), {"id": "a1", "step": "s", "content": "1"})

            await migrate.upgrade(engine)

            async with engine.begin() as connection:
                await connection.execute(text(ARTIFACT), {"id": "a2", "step": "s2", "content": "2"})
                kept = await connection.execute(
                    text("SELECT step_id, content FROM run_artifacts ORDER BY id")
                )
                assert kept.all() == [("s", "1"), ("s2", "2")]
            with pytest.raises(IntegrityError):  # one per step and name, still
                async with engine.begin() as connection:
                    await connection.execute(
                        text(ARTIFACT), {"id": "a3", "step": "s", "content": "3"}
                    )
        finally:
            await engine.dispose()
