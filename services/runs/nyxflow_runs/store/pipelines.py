"""Code pipelines: start one over a repository; store and read what its runs produced."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from nyxflow import events as ev
from nyxflow import metrics
from nyxflow.errors import FailedPrecondition, NotFound
from nyxflow.pipelines import pipeline_steps
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs import validation as valid
from nyxflow_runs.models import Finding, Repository, Run, RunArtifact, Step, Workflow
from nyxflow_runs.store.engine_writes import EngineWrites
from nyxflow_runs.store.projects import held_under_project
from nyxflow_runs.store.workflows import Workflows, step_row
from nyxflow_runs.validation import step_drafts


class Pipelines(Workflows, EngineWrites):
    async def start_pipeline(
        self,
        tenant_id: str,
        request: runs_pb2.StartPipelineRequest,
        chain: Sequence[str],
        params: dict[str, Any],
    ) -> pb.Run:
        """A fresh workflow from the built-in template, and its pending run, in one commit."""
        async with self._scoped(tenant_id, write=True) as session:
            # Held with its project (the pipeline's workflow goes under it) until the commit: a
            # move of the project to another tenant is waited for, then seen.
            repo = await held_under_project(session, Repository, tenant_id, request.repository_id)
            if repo is None:
                raise NotFound(
                    f"repository {request.repository_id} not found", field="repository_id"
                )
            if not repo.path:
                raise FailedPrecondition("the repository has no local path", field="path")
            specs = pipeline_steps(
                request.pipeline,
                path=repo.path,
                goal=request.goal,
                test_command=request.test_command,
                max_files=request.max_files,
                max_bytes=request.max_bytes,
                providers=chain,
                params=params,
            )
            drafts = step_drafts(specs, await self._personas(session, tenant_id))
            workflow = Workflow(
                tenant_id=tenant_id,
                project_id=repo.project_id,
                name=valid.fitted_name(f"{request.pipeline}: {repo.owner}/{repo.repo}"),
            )
            session.add(workflow)
            await session.flush()
            session.add_all(step_row(tenant_id, workflow.id, i, d) for i, d in enumerate(drafts))
            run = Run(tenant_id=tenant_id, workflow_id=workflow.id, status=ev.PENDING)
            session.add(run)
            await session.flush()
            metrics.RUNS_CREATED.inc()
            return await self._run_pb(session, run)

    async def save_artifacts(
        self,
        tenant_id: str,
        run_id: str,
        token: int,
        step_id: str,
        artifacts: Sequence[pb.Artifact],
        findings: Sequence[pb.Finding],
    ) -> None:
        async with self._scoped(tenant_id, write=True) as session:
            await self._fenced_workflow(session, tenant_id, run_id, token)
            for a in artifacts:
                # A retried step replaces what its earlier attempt stored under the same name;
                # another step's artifact of that name (a second review step's patch) stays.
                old = await session.scalar(
                    select(RunArtifact).where(
                        RunArtifact.run_id == run_id,
                        RunArtifact.step_id == step_id,
                        RunArtifact.name == a.name,
                    )
                )
                if old is not None:
                    await session.delete(old)
                    await session.flush()
                session.add(
                    RunArtifact(
                        run_id=run_id,
                        step_id=step_id,
                        name=a.name,
                        media_type=a.media_type or "text/plain",
                        content=a.content,
                    )
                )
            # The step run again in the same run (resumed after a handover or a drain, or a
            # save whose answer was lost and retried) reports what it reported before: those
            # are stored once. Counted, not a set: a report may hold the same finding twice
            # (two places alike), and both are kept as the step's report counts them.
            stored = Counter(
                (r.file, r.line, r.severity, r.category, r.message)
                for r in await session.scalars(
                    select(Finding).where(Finding.run_id == run_id, Finding.step_id == step_id)
                )
            )
            for f in findings:
                key = (f.file, f.line, f.severity, f.category, f.message)
                if stored[key] > 0:
                    stored[key] -= 1
                    continue
                session.add(
                    Finding(
                        run_id=run_id,
                        step_id=step_id,
                        file=f.file,
                        line=f.line,
                        severity=f.severity,
                        category=f.category,
                        message=f.message,
                    )
                )

    async def get_artifact(
        self, tenant_id: str, run_id: str, name: str, step_id: str = ""
    ) -> pb.Artifact:
        """The named artifact of the step asked for; without one, of the last step (by
        position) that stored one: a workflow's later review step, the patch it ended with."""
        async with self._scoped(tenant_id) as session:
            await self._run(session, tenant_id, run_id)
            query = (
                select(RunArtifact)
                .outerjoin(Step, Step.id == RunArtifact.step_id)
                .where(RunArtifact.run_id == run_id, RunArtifact.name == name)
            )
            if step_id:
                query = query.where(RunArtifact.step_id == step_id)
            # A step since deleted from the workflow comes last; ties by when it was stored.
            row = await session.scalar(
                query.order_by(
                    Step.position.is_(None),
                    Step.position.desc(),
                    RunArtifact.created_at.desc(),
                    RunArtifact.id.desc(),
                ).limit(1)
            )
            if row is None and step_id:
                # Never another step's in its place: name the steps that have one instead.
                others = list(
                    await session.scalars(
                        select(RunArtifact.step_id).where(
                            RunArtifact.run_id == run_id, RunArtifact.name == name
                        )
                    )
                )
                if others:
                    raise NotFound(
                        f"step {step_id} of run {run_id} has no artifact {name!r};"
                        f" steps with one: {', '.join(sorted(others))}",
                        field="step_id",
                    )
            if row is None:
                raise NotFound(f"run {run_id} has no artifact {name!r}", field="name")
            return pb.Artifact(
                name=row.name,
                media_type=row.media_type,
                content=row.content,
                step_id=row.step_id,
                created_at=row.created_at,
            )

    async def list_findings(self, tenant_id: str, run_id: str) -> list[pb.Finding]:
        async with self._scoped(tenant_id) as session:
            await self._run(session, tenant_id, run_id)
            rows = await session.scalars(
                select(Finding).where(Finding.run_id == run_id).order_by(Finding.file, Finding.line)
            )
            return [
                pb.Finding(
                    file=f.file,
                    line=f.line,
                    severity=f.severity,
                    category=f.category,
                    message=f.message,
                    step_id=f.step_id,
                )
                for f in rows.all()
            ]
