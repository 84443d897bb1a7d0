"""/v1/personas: the built-ins and the tenant's own named system prompts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway import convert, errors
from nyxflow_gateway.deps import Clients
from nyxflow_gateway.routes import Body

router = APIRouter(prefix="/v1/personas", tags=["personas"])


class PersonaBody(Body):
    role: str = Field(default="", max_length=200)
    system_prompt: str = Field(min_length=1, max_length=1_000_000)  # well under a gRPC message


@router.get("")
async def list_personas(services: Clients) -> dict[str, Any]:
    return {"personas": [convert.persona(p) for p in await services.runs.list_personas()]}


@router.put("/{name}")
@errors.sent_as({"persona": ""})  # PutPersonaRequest.persona: the path's name and the body
async def put_persona(name: str, body: PersonaBody, services: Clients) -> dict[str, Any]:
    persona = pb.Persona(name=name, role=body.role, system_prompt=body.system_prompt)
    return convert.persona(await services.runs.put_persona(persona))
