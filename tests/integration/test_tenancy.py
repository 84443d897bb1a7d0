"""Tenants are walls: keys, the scoped store, every RPC with another tenant's ids, and moving
a project with everything under it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pbd
from sqlalchemy import select, update

from nyxflow import events as ev
from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, RunsClient, open_channel
from nyxflow.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2, runs_pb2_grpc
from nyxflow_runs.bus import LocalBus
from nyxflow_runs.db import create_engine, session_factory
from nyxflow_runs.models import Run, Workflow
from nyxflow_runs.store import Store
from tests.support.direct import Direct
from tests.support.inprocess import ADMIN_KEY, API_KEY, Clients


def llm(name: str) -> pb.StepSpec:
    return pb.StepSpec(name=name, kind="llm", prompt="p", params_json=json.dumps({"tokens": 3}))


@dataclass
class Tenants:
    admin: AdminClient
    a: RunsClient
    b: RunsClient
    b_key: str
    b_id: str
    channel: grpc.aio.Channel


@pytest.fixture
async def tenants(runs_addr: str) -> AsyncIterator[Tenants]:
    async with open_channel(runs_addr) as channel:
        admin = AdminClient(channel, bearer_metadata(ADMIN_KEY))
        b = await admin.create_tenant("team-b", "Team B")
        created = await admin.create_api_key("team-b", "ci")
        yield Tenants(
            admin,
            RunsClient(channel, bearer_metadata(API_KEY)),
            RunsClient(channel, bearer_metadata(created.secret)),
            created.secret,
            b.id,
            channel,
        )


# --- keys -------------------------------------------------------------------------------


async def test_admin_calls_need_the_admin_key(tenants: Tenants) -> None:
    for md in (bearer_metadata(API_KEY), bearer_metadata(tenants.b_key), ()):
        with pytest.raises(Unauthenticated):
            await AdminClient(tenants.channel, md).list_tenants()
    slugs = [t.slug for t in await tenants.admin.list_tenants()]
    assert slugs == ["default", "team-b"]


async def test_a_key_is_shown_once_stored_hashed_and_revocable(tenants: Tenants) -> None:
    created = await tenants.admin.create_api_key("team-b", "laptop")
    assert created.secret.startswith("nyx_") and len(created.secret) > 40
    listed = await tenants.admin.list_api_keys("team-b")
    assert [k.name for k in listed] == ["ci", "laptop"]
    assert created.secret not in repr(listed)
    as_laptop = RunsClient(tenants.channel, bearer_metadata(created.secret))
    assert await as_laptop.list_workflows() == []

    revoked = await tenants.admin.revoke_api_key(created.key.id)

    assert revoked.revoked_at > 0
    with pytest.raises(Unauthenticated):
        await as_laptop.list_workflows()
    assert await tenants.b.list_workflows() == []  # the other key of the tenant still works


async def test_expired_unknown_and_malformed_keys_are_refused(tenants: Tenants) -> None:
    # 2.5 s: the first call comes before it expires even on a loaded machine.
    soon = await tenants.admin.create_api_key("team-b", "short", expires_at=time.time() + 2.5)
    client = RunsClient(tenants.channel, bearer_metadata(soon.secret))
    await client.list_workflows()
    # past expiry: the key cache must not outlive the key
    await asyncio.sleep(max(0.0, soon.key.expires_at - time.time()) + 0.2)
    with pytest.raises(Unauthenticated):
        await client.list_workflows()
    for md in (bearer_metadata("nyx_nope"), (("authorization", "Basic abc"),), ()):
        with pytest.raises(Unauthenticated):
            await RunsClient(tenants.channel, md).list_workflows()


async def test_a_slug_shaped_like_a_tenant_id_is_refused(tenants: Tenants) -> None:
    """Tenants are named by id or slug: a slug equal to team B's id was accepted, and a key
    asked for the new tenant by its slug was issued to team B."""
    for slug in (tenants.b_id, "0c6e5f0e-1b2a-4c3d-8e9f-a0b1c2d3e4f5"):
        with pytest.raises(InvalidArgument) as refused:
            await tenants.admin.create_tenant(slug, "Impostor")
        assert refused.value.field == "slug"
        assert "tenant id" in refused.value.message
    assert [t.slug for t in await tenants.admin.list_tenants()] == ["default", "team-b"]
    await tenants.admin.create_tenant("0c6e5f0e-1b2a-4c3d-8e9f", "Not an id")  # merely hex


async def test_a_tenant_named_by_one_s_id_and_another_s_slug_is_refused_not_guessed(
    tenants: Tenants, db: Direct
) -> None:
    """A slug shaped like team B's id, stored before such slugs were refused: the first
    tenant found was taken, so a key could go to either."""
    await db.add_tenant(tenants.b_id)
    project = await tenants.a.create_project("alpha")
    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("tenant", lambda: tenants.admin.create_api_key(tenants.b_id, "which")),
        ("tenant", lambda: tenants.admin.list_api_keys(tenants.b_id)),
        ("to_tenant", lambda: tenants.admin.move_project(project.id, tenants.b_id)),
    ]
    for field, call in calls:
        with pytest.raises(FailedPrecondition) as refused:
            await call()
        assert refused.value.field == field and "ambiguous" in refused.value.message
    assert [k.name for k in await tenants.admin.list_api_keys("team-b")] == ["ci"]
    assert (await tenants.a.get_project(project.id)).id == project.id  # not moved


# --- every RPC with another tenant's ids -------------------------------------------------

# Engine calls take internal credentials only (tested in test_runs_invariants).
ENGINE_ONLY = {
    "ClaimRun", "Heartbeat", "AppendEvents", "UpdateStep", "FinishRun", "PutStepItem", "Record",
    "RecordMany", "GenerateSteps", "SaveArtifacts", "ReleaseRun", "ListRequeuedRuns",
}  # fmt: skip
LISTS = {"ListWorkflows", "ListRuns", "ListProjects", "ListPersonas"}
CREATES = {"CreateWorkflow", "CreateProject", "PutPersona"}  # take no foreign id, or checked below


async def _a_world(a: RunsClient, api: Clients) -> dict[str, str]:
    """Tenant A's ids: a project with a repository, a workflow in it, a finished run."""
    project = await a.create_project("alpha")
    repository = await a.add_repository(project.id, "acme", "app", "/src/app")
    workflow = await a.create_workflow(
        "wf",
        [llm("s")],
        project_id=project.id,
    )
    run = await a.create_run(workflow.id)
    assert api.engine is not None
    _ = [e async for e in api.engine.execute(run.id)]
    return {
        "project_id": project.id,
        "workflow_id": workflow.id,
        "run_id": run.id,
        "step_id": workflow.steps[0].id,
        "repository_id": repository.id,
    }


def _request_with_ids(method: pbd.MethodDescriptor, ids: dict[str, str]) -> Any:
    request_class = getattr(runs_pb2, method.input_type.name)
    fields = {f.name for f in method.input_type.fields}
    values: dict[str, Any] = {k: v for k, v in ids.items() if k in fields}
    defaults: tuple[tuple[str, Any], ...] = (
        ("types", ["run_started"]),
        ("owner", "o"),
        ("repo", "r"),
        ("text", "t"),
        ("name", "n"),
        ("pipeline", "auto-fix"),
    )
    for name, default in defaults:
        if name in fields:
            values[name] = default
    return request_class(**values)


async def test_every_rpc_answers_not_found_for_another_tenants_ids(
    tenants: Tenants, api: Clients
) -> None:
    ids = await _a_world(tenants.a, api)
    stub = runs_pb2_grpc.RunsStub(tenants.channel)
    md = bearer_metadata(tenants.b_key)
    service = runs_pb2.DESCRIPTOR.services_by_name["Runs"]
    checked = []
    for method in service.methods:
        if method.name in ENGINE_ONLY | LISTS | CREATES:
            continue
        request = _request_with_ids(method, ids)
        assert any(getattr(request, f, "") for f in ids), f"{method.name}: add its id to the test"
        call = getattr(stub, method.name)(request, metadata=md, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if method.server_streaming:
                async for _ in call:
                    pass
            else:
                await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, method.name
        checked.append(method.name)
    assert len(checked) >= 14  # a renamed or dropped RPC shows up here

    # Lists never include A's rows; creating into A's project is NOT_FOUND too.
    assert await tenants.b.list_workflows() == []
    assert await tenants.b.list_runs() == []
    assert await tenants.b.list_projects() == []
    with pytest.raises(NotFound):  # filtered by A's workflow: not "B has no runs of it"
        await tenants.b.list_runs(ids["workflow_id"])
    with pytest.raises(NotFound):
        await tenants.b.create_workflow(
            "x",
            [llm("s")],
            project_id=ids["project_id"],
        )
    # The same names are free in B: uniqueness is per tenant.
    project = await tenants.b.create_project("alpha")
    await tenants.b.add_repository(project.id, "acme", "app")
    with pytest.raises(AlreadyExists) as exists:
        await tenants.b.add_repository(project.id, "acme", "app")
    assert exists.value.field == "repo"


async def test_a_scoped_session_filters_without_a_where(
    tenants: Tenants, database_url: str
) -> None:
    """The store's one enforcement point: no `where tenant_id` written, none leaked."""
    theirs = await tenants.a.create_workflow("a-only", [llm("s")])
    engine = create_engine(database_url)
    store = Store(session_factory(engine), LocalBus())
    try:
        async with store._scoped(tenants.b_id, write=True) as session:
            assert (await session.scalars(select(Workflow))).all() == []
            changed = await session.execute(
                update(Workflow).values(name="stolen").execution_options(synchronize_session=False)
            )
            assert changed.rowcount == 0  # type: ignore[attr-defined]
            assert (await session.scalars(select(Run))).all() == []
    finally:
        await engine.dispose()
    assert (await tenants.a.get_workflow(theirs.id)).name == "a-only"


# --- moving a project --------------------------------------------------------------------


async def test_move_project_dry_run_then_move_everything(tenants: Tenants, api: Clients) -> None:
    ids = await _a_world(tenants.a, api)
    await tenants.a.add_project_note(ids["project_id"], "remember the flaky test")
    await tenants.a.add_workflow_insight(ids["workflow_id"], "step s is slow")
    before = await tenants.a.get_run(ids["run_id"])

    dry = await tenants.admin.move_project(ids["project_id"], "team-b", dry_run=True)
    assert not dry.moved and list(dry.conflicts) == []
    assert dry.counts["projects"] == 1 and dry.counts["workflows"] == 1
    assert dry.counts["runs"] == 1 and dry.counts["run_events"] == before.last_seq
    assert (await tenants.a.get_project(ids["project_id"])).name == "alpha"  # nothing changed

    moved = await tenants.admin.move_project(ids["project_id"], "team-b")

    assert moved.moved and dict(moved.counts) == dict(dry.counts)
    for read in (tenants.a.get_project, tenants.a.get_workflow, tenants.a.get_run):
        key = {"get_project": "project_id", "get_workflow": "workflow_id", "get_run": "run_id"}
        with pytest.raises(NotFound):
            await read(ids[key[read.__name__]])
    assert await tenants.a.list_workflows() == [] and await tenants.a.list_runs() == []
    project = await tenants.b.get_project(ids["project_id"])
    assert [r.repo for r in project.repositories] == ["app"]
    assert [n.text for n in project.notes] == ["remember the flaky test"]
    run = await tenants.b.get_run(ids["run_id"])
    assert run.status == ev.COMPLETED and run.steps[0].output == before.steps[0].output
    events = [e async for e in tenants.b.watch_run(ids["run_id"])]
    assert [e.seq for e in events] == list(range(1, before.last_seq + 1))


async def test_move_conflicts_fail_or_replace_only_empty_records(
    tenants: Tenants, api: Clients
) -> None:
    ids = await _a_world(tenants.a, api)
    clash = await tenants.b.create_project("alpha")  # same name, empty
    repo_clash = await tenants.b.create_project("other")
    await tenants.b.add_repository(repo_clash.id, "acme", "app")

    with pytest.raises(AlreadyExists) as refused:
        await tenants.admin.move_project(ids["project_id"], "team-b")
    assert "project alpha" in refused.value.message and "acme/app" in refused.value.message
    assert (await tenants.a.get_project(ids["project_id"])).name == "alpha"  # nothing moved
    assert (await tenants.b.get_project(clash.id)).name == "alpha"

    # Not empty any more: replace_empty refuses, still changing nothing.
    await tenants.b.create_workflow("keep me", [llm("s")], project_id=clash.id)
    with pytest.raises(AlreadyExists) as not_empty:
        await tenants.admin.move_project(ids["project_id"], "team-b", on_conflict="replace_empty")
    assert "not empty" in not_empty.value.message
    assert (await tenants.a.get_project(ids["project_id"])).name == "alpha"

    # Empty again (its workflow moved elsewhere): replaced.
    await tenants.b.delete_workflow((await tenants.b.list_workflows())[0].id)
    moved = await tenants.admin.move_project(
        ids["project_id"], "team-b", on_conflict="replace_empty"
    )
    assert moved.moved
    with pytest.raises(NotFound):
        await tenants.b.get_project(clash.id)
    assert (await tenants.b.get_project(ids["project_id"])).repositories[0].repo == "app"
    assert (await tenants.b.get_project(repo_clash.id)).repositories == []


async def _a_project_naming_personas(tenants: Tenants) -> tuple[str, str, dict[str, str]]:
    """Team A's project whose steps name: its own `reviewer` (team B has another), the
    built-in Athena as it is (team B shadows it), its own Cael (shadowing the built-in, which
    team B uses), the built-in Morgan (the same for both) and its own `helper` (team B has
    none). The project, its workflow, and each step's system prompt."""
    for name, prompt in (("reviewer", "Be strict: reject unsafe SQL."), ("Cael", "A's Cael.")):
        await tenants.a.put_persona(pb.Persona(name=name, system_prompt=prompt))
    await tenants.a.put_persona(pb.Persona(name="helper", role="aide", system_prompt="Help."))
    await tenants.b.put_persona(pb.Persona(name="reviewer", system_prompt="Approve all."))
    await tenants.b.put_persona(pb.Persona(name="Athena", system_prompt="B's Athena."))
    project = await tenants.a.create_project("alpha")
    names = ["reviewer", "Athena", "Cael", "Morgan", "helper"]
    steps = [
        pb.StepSpec(name=f"s{i}", kind="llm", prompt="p", persona=n) for i, n in enumerate(names)
    ]
    workflow = await tenants.a.create_workflow("wf", steps, project_id=project.id)
    return project.id, workflow.id, {s.spec.persona: s.system_prompt for s in workflow.steps}


async def test_move_refuses_personas_that_mean_another_prompt_in_the_target(
    tenants: Tenants,
) -> None:
    """A persona of the same name in the target silently gave the moved steps its prompt."""
    project_id, workflow_id, prompts = await _a_project_naming_personas(tenants)

    dry = await tenants.admin.move_project(project_id, "team-b", dry_run=True)
    conflicts = {c.name: c for c in dry.conflicts}
    assert sorted(conflicts) == ["Athena", "Cael", "reviewer"]
    assert {c.kind for c in dry.conflicts} == {"persona"} and not dry.moved
    assert conflicts["reviewer"].detail == "the target's own has another system prompt"
    assert conflicts["Cael"].detail == "the target's built-in has another system prompt"
    assert conflicts["Cael"].target_id == "" and conflicts["reviewer"].target_id

    with pytest.raises(AlreadyExists) as refused:
        await tenants.admin.move_project(project_id, "team-b")
    assert refused.value.field == "on_persona_conflict"
    assert all(f"persona {name}" in refused.value.message for name in conflicts)
    assert (await tenants.a.get_workflow(workflow_id)).steps[0].system_prompt == prompts["reviewer"]
    with pytest.raises(InvalidArgument) as bad:
        await tenants.admin.move_project(project_id, "team-b", on_persona_conflict="merge")
    assert bad.value.field == "on_persona_conflict"


async def test_move_renames_conflicting_personas_and_keeps_every_prompt(tenants: Tenants) -> None:
    project_id, workflow_id, prompts = await _a_project_naming_personas(tenants)
    b_personas = {p.name: p.system_prompt for p in await tenants.b.list_personas()}

    dry = await tenants.admin.move_project(
        project_id, "team-b", dry_run=True, on_persona_conflict="rename"
    )
    moved = await tenants.admin.move_project(project_id, "team-b", on_persona_conflict="rename")

    renamed = {c.name: c.renamed_to for c in moved.conflicts}
    assert renamed == {"reviewer": "reviewer (default)", "Athena": "Athena (default)",
                       "Cael": "Cael (default)"}  # fmt: skip
    assert moved.moved and [c.renamed_to for c in dry.conflicts] == list(renamed.values())
    steps = (await tenants.b.get_workflow(workflow_id)).steps
    assert [s.spec.persona for s in steps] == [
        "reviewer (default)", "Athena (default)", "Cael (default)", "Morgan", "helper"
    ]  # fmt: skip
    assert [s.system_prompt for s in steps] == list(prompts.values())
    after = {p.name: p for p in await tenants.b.list_personas()}
    assert {n: after[n].system_prompt for n in b_personas} == b_personas  # B's own unchanged
    assert after["Cael"].builtin and after["helper"].role == "aide"


async def test_move_renames_within_the_persona_name_limit_from_a_long_slug(
    tenants: Tenants,
) -> None:
    """A source slug of 100 characters made ` (slug)` alone wider than a persona's name (100):
    PostgreSQL failed the move (INTERNAL), SQLite stored names PutPersona would refuse. The
    slug is cut, the name keeps at least half the room, the number stays."""
    slug, long_name = "s" * 100, "L" * 100
    await tenants.admin.create_tenant(slug, "Long")
    source = RunsClient(
        tenants.channel,
        bearer_metadata((await tenants.admin.create_api_key(slug, "k")).secret),
    )

    async def project_naming(persona_names: list[str], prompt: str) -> str:
        for name in persona_names:
            await source.put_persona(pb.Persona(name=name, system_prompt=prompt))
        project = await source.create_project(prompt)
        steps = [
            pb.StepSpec(name=f"s{i}", kind="llm", prompt="p", persona=n)
            for i, n in enumerate(persona_names)
        ]
        await source.create_workflow("wf", steps, project_id=project.id)
        return project.id

    for name in ("reviewer", long_name):
        await tenants.b.put_persona(pb.Persona(name=name, system_prompt="B's own."))
    first = await project_naming(["reviewer", long_name], "first")
    dry = await tenants.admin.move_project(
        first, "team-b", dry_run=True, on_persona_conflict="rename"
    )
    moved = await tenants.admin.move_project(first, "team-b", on_persona_conflict="rename")
    second = await project_naming(["reviewer"], "second")  # another prompt: numbered
    again = await tenants.admin.move_project(second, "team-b", on_persona_conflict="rename")

    renamed = {c.name: c.renamed_to for c in moved.conflicts}
    assert [c.renamed_to for c in dry.conflicts] == [c.renamed_to for c in moved.conflicts]
    assert renamed == {
        "reviewer": "reviewer (" + "s" * 88 + "…)",
        long_name: "L" * 49 + " (" + "s" * 47 + "…)",
    }
    assert [c.renamed_to for c in again.conflicts] == ["reviewer (" + "s" * 86 + "… 2)"]
    after = {p.name: p.system_prompt for p in await tenants.b.list_personas()}
    for name in [*renamed.values(), again.conflicts[0].renamed_to]:
        assert len(name) == 100 and name in after
        await tenants.b.put_persona(pb.Persona(name=name, system_prompt=after[name]))
    assert after[renamed["reviewer"]] == "first" and after[renamed[long_name]] == "first"
    assert after[again.conflicts[0].renamed_to] == "second" and after["reviewer"] == "B's own."


async def test_move_keeps_the_target_s_personas_when_told(tenants: Tenants) -> None:
    project_id, workflow_id, prompts = await _a_project_naming_personas(tenants)

    moved = await tenants.admin.move_project(
        project_id, "team-b", on_persona_conflict="keep_target"
    )

    assert moved.moved and sorted(c.name for c in moved.conflicts) == ["Athena", "Cael", "reviewer"]
    steps = {
        s.spec.persona: s.system_prompt for s in (await tenants.b.get_workflow(workflow_id)).steps
    }
    assert steps["reviewer"] == "Approve all." and steps["Athena"] == "B's Athena."
    assert steps["Cael"] != prompts["Cael"] and steps["helper"] == prompts["helper"]
    after = {p.name: p for p in await tenants.b.list_personas()}
    assert after["Cael"].builtin and after["reviewer"].system_prompt == "Approve all."


async def test_move_is_refused_while_a_run_is_active(tenants: Tenants) -> None:
    project = await tenants.a.create_project("busy")
    workflow = await tenants.a.create_workflow(
        "wf",
        [llm("s")],
        project_id=project.id,
    )
    await tenants.a.create_run(workflow.id)  # pending, never executed here
    with pytest.raises(FailedPrecondition):
        await tenants.admin.move_project(project.id, "team-b")
    with pytest.raises(NotFound):
        await tenants.admin.move_project("nope", "team-b")
    with pytest.raises(NotFound) as unknown:
        await tenants.admin.move_project(project.id, "nobody")
    assert unknown.value.field == "to_tenant"
