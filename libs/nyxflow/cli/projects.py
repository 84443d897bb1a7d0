"""`nyxflow project` and `nyxflow pipeline`: repositories and the code pipelines over them."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import typer

from nyxflow.cli import render
from nyxflow.cli.connection import connect, err, require_utf8, run_async
from nyxflow.cli.paging import read_pages
from nyxflow.pipelines import PIPELINES
from nyxflow.v1 import runs_pb2

project_app = typer.Typer(help="Projects and their repositories.")
pipeline_app = typer.Typer(help="Code analysis, auto-fix and refactor over a repository.")
JSON = typer.Option(False, "--json", help="Machine-readable output.")


@project_app.command("create")
@run_async
async def project_create(name: str, as_json: bool = JSON) -> None:
    async with connect() as c:
        project = await c.runs.create_project(name)
    render.as_json(project) if as_json else render.out.print(f"created {project.id}")


@project_app.command("list")
@run_async
async def project_list(as_json: bool = JSON) -> None:
    async with connect() as c:
        projects = await c.runs.list_projects()
    if as_json:
        render.as_json(list(projects))
        return
    table = render.make_table("id", "name", "repositories", "workflows")
    for p in projects:
        repos = ", ".join(f"{r.owner}/{r.repo} ({r.id})" for r in p.repositories)
        render.add_row(table, p.id, p.name, repos, str(len(p.workflow_ids)))
    render.out.print(table)


@project_app.command("notes")
@run_async
async def project_notes(
    project_id: str,
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Notes per page."),
    page_token: str = typer.Option(
        "", "--page-token", help="Continue after an earlier page (the token it printed)."
    ),
    every: bool = typer.Option(False, "--all", help="Every note, page after page."),
    as_json: bool = JSON,
) -> None:
    """A project's notes, newest first, whole: a page of them, and on stderr how to ask for
    the next one."""
    async with connect() as c:

        async def fetch(token: str) -> tuple[Iterable[runs_pb2.ProjectNote], str]:
            page = await c.runs.list_project_notes(project_id, limit, token)
            return page.notes, page.next_page_token

        notes, page_token = await read_pages(fetch, page_token, every)
    if as_json:
        render.as_json(list(notes))
    else:
        for note in notes:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(note.created_at))
            render.out.print(render.line((f"note {note.id} · {when}", "bold")))
            render.out.print(render.line(note.text))
            render.out.print()
    if page_token:  # on stderr: `--json` stays a list, and a pipe reads the notes alone
        err.print(f"older notes: --page-token {page_token}")


@project_app.command("add-repo")
@run_async
async def project_add_repo(
    project_id: str, owner: str, repo: str, path: Path, as_json: bool = JSON
) -> None:
    """Register a local git work tree (pipelines read it; they never write to it)."""
    resolved = _absolute(path)
    async with connect() as c:
        repository = await c.runs.add_repository(project_id, owner, repo, resolved)
    render.as_json(repository) if as_json else render.out.print(f"added {repository.id}")


def _absolute(path: Path) -> str:
    """The services may run elsewhere in the file system: send an absolute path."""
    resolved = str(path.expanduser().resolve())
    require_utf8("path", resolved)
    return resolved


@pipeline_app.command("start")
@run_async
async def pipeline_start(
    repository_id: str,
    pipeline: str = typer.Argument(..., help=" | ".join(PIPELINES)),
    goal: str = typer.Option("", help="refactor: what to achieve."),
    test_command: str = typer.Option("", help="Run after each patch in a scratch clone."),
    provider: list[str] = typer.Option([], "--provider", help="Chain entry, repeatable."),
    params: str = typer.Option("", help="Provider parameters for the model steps (JSON)."),
    as_json: bool = JSON,
) -> None:
    """Start a pipeline; `nyxflow run follow RUN` watches it phase by phase."""
    request = runs_pb2.StartPipelineRequest(
        repository_id=repository_id,
        pipeline=pipeline,
        goal=goal,
        test_command=test_command,
        providers=provider,
        params_json=params,
    )
    async with connect() as c:
        run = await c.runs.start_pipeline(request)
    if as_json:
        render.as_json(run)
        return
    render.out.print(
        render.line(f"run {run.id} ", render.status(run.status), f" · phase {run.phase}")
    )


@pipeline_app.command("patch")
@run_async
async def pipeline_patch(
    run_id: str,
    step: str = typer.Option(
        "", "--step", help="The review step whose patch to print (default: the last one's)."
    ),
) -> None:
    """Print a finished run's combined patch (apply it yourself with `git apply`)."""
    async with connect() as c:
        artifact = await c.runs.get_artifact(run_id, "patch", step)
    render.raw(artifact.content)
