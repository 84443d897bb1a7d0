"""/v1/projects: projects, their repositories and notes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from nyxflow_gateway import convert
from nyxflow_gateway.deps import Clients
from nyxflow_gateway.routes import Body

router = APIRouter(prefix="/v1/projects", tags=["projects"])


class ProjectBody(Body):
    name: str = Field(min_length=1, max_length=200)


class RepositoryBody(Body):
    owner: str = Field(min_length=1, max_length=200)
    repo: str = Field(min_length=1, max_length=200)
    path: str = Field(default="", max_length=4096)


class NoteBody(Body):
    text: str = Field(min_length=1, max_length=100_000)


@router.post("", status_code=201)
async def create_project(body: ProjectBody, services: Clients) -> dict[str, Any]:
    return convert.project(await services.runs.create_project(body.name))


@router.get("")
async def list_projects(services: Clients) -> dict[str, Any]:
    return {"projects": [convert.project(p) for p in await services.runs.list_projects()]}


@router.get("/{project_id}")
async def get_project(project_id: str, services: Clients) -> dict[str, Any]:
    return convert.project(await services.runs.get_project(project_id))


@router.post("/{project_id}/repositories", status_code=201)
async def add_repository(
    project_id: str, body: RepositoryBody, services: Clients
) -> dict[str, Any]:
    repository = await services.runs.add_repository(project_id, body.owner, body.repo, body.path)
    return convert.repository(repository)


@router.get("/{project_id}/notes")
async def list_notes(
    project_id: str,
    services: Clients,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    page_token: str = "",
) -> dict[str, Any]:
    """The project's notes, newest first, as many as `limit` and about 1,000,000 characters
    hold; `next_page_token`, when not null, is the `page_token` of the next (older) page."""
    page = await services.runs.list_project_notes(project_id, limit, page_token)
    return {
        "notes": [convert.note(n) for n in page.notes],
        "next_page_token": page.next_page_token or None,
    }


@router.post("/{project_id}/notes", status_code=201)
async def add_note(project_id: str, body: NoteBody, services: Clients) -> dict[str, Any]:
    return convert.note(await services.runs.add_project_note(project_id, body.text))
