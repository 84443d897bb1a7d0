"""Every workflow operation over HTTP, as the page and scripts use them."""

from __future__ import annotations

import httpx

from nyxflow import events as ev
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.processes import ProcessStack
from tests.support.sse_client import read_events

TEMPLATE = """
name: From YAML
steps:
  - name: Draft
    alternatives: 2
    params: {tokens: 6}
  - name: Review
    persona: Nemesis
    prompt: "Review: {{ steps.Draft.output }}"
    params: {tokens: 6}
"""


async def finish(http: httpx.AsyncClient, stack: ProcessStack, run_id: str) -> str:
    events = await read_events(http, f"/v1/runs/{run_id}/events", stack.headers)
    return str(events[-1].event)


async def test_import_select_retry_duplicate_rerun_delete(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    headers = stack.headers
    imported = await http.post(
        "/v1/workflows/import",
        content=TEMPLATE,
        headers={**headers, "Content-Type": "application/yaml"},
    )
    assert imported.status_code == 201, imported.text
    workflow = imported.json()
    assert [s["persona"] for s in workflow["steps"]] == ["", "Nemesis"]
    run_id = await start_run(http, stack, workflow["id"])
    assert await finish(http, stack, run_id) == ev.RUN_COMPLETED

    draft = (await get_run(http, stack, run_id))["steps"][0]
    assert len(draft["alternatives"]) == 2
    chosen = await http.post(f"/v1/steps/{draft['id']}/select", json={"index": 1}, headers=headers)
    assert (
        chosen.status_code == 200 and chosen.json()["output"] == draft["alternatives"][1]["output"]
    )
    out_of_range = await http.post(
        f"/v1/steps/{draft['id']}/select", json={"index": 5}, headers=headers
    )
    assert out_of_range.status_code == 400 and out_of_range.json()["error"]["field"] == "index"

    retried = await http.post(
        f"/v1/steps/{draft['id']}/retry", json={"cascade": True}, headers=headers
    )
    assert retried.status_code == 201
    assert [s["status"] for s in retried.json()["steps"]] == []  # a new run carries no steps yet
    fresh = await get_run(http, stack, retried.json()["id"])
    assert [s["status"] for s in fresh["steps"]] == ["pending", "pending"]
    assert await finish(http, stack, fresh["id"]) == ev.RUN_COMPLETED

    copy = await http.post(f"/v1/workflows/{workflow['id']}/duplicate", headers=headers)
    assert copy.status_code == 201 and copy.json()["name"] == "From YAML (copy)"

    rerun = await http.post(f"/v1/workflows/{workflow['id']}/rerun", headers=headers)
    assert rerun.status_code == 201
    busy = await http.delete(f"/v1/workflows/{workflow['id']}", headers=headers)
    assert busy.status_code == 409 and "pending" in busy.json()["error"]["message"]
    assert await finish(http, stack, rerun.json()["id"]) == ev.RUN_COMPLETED
    assert (
        await http.delete(f"/v1/workflows/{workflow['id']}", headers=headers)
    ).status_code == 204
    gone = await http.get(f"/v1/workflows/{workflow['id']}", headers=headers)
    assert gone.status_code == 404


async def test_pause_cancel_resume_over_http(http: httpx.AsyncClient, stack: ProcessStack) -> None:
    slow = {"tokens": 30, "token_delay_ms": 20}
    workflow = await create_workflow(
        http, stack, "steer", [{"name": f"s{i}", "params": slow} for i in range(3)]
    )
    run_id = await start_run(http, stack, workflow["id"])
    await read_events(http, f"/v1/runs/{run_id}/events", stack.headers, limit=2)
    paused = await http.post(f"/v1/runs/{run_id}/pause", headers=stack.headers)
    assert paused.status_code == 200 and paused.json()["pause_requested"]
    run = await eventually(
        lambda: get_run(http, stack, run_id), lambda r: r["status"] == "paused", timeout_s=10
    )
    assert "running" not in [s["status"] for s in run["steps"]]

    resumed = await http.post(f"/v1/workflows/{workflow['id']}/resume", headers=stack.headers)
    assert resumed.status_code == 201
    resumed_id = resumed.json()["id"]
    await read_events(http, f"/v1/runs/{resumed_id}/events", stack.headers, limit=3)
    cancelled = await http.post(f"/v1/runs/{resumed_id}/cancel", headers=stack.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = await http.post(f"/v1/runs/{resumed_id}/cancel", headers=stack.headers)
    assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"]
    runs = await http.get(f"/v1/workflows/{workflow['id']}/runs", headers=stack.headers)
    assert [r["status"] for r in runs.json()["runs"]] == ["cancelled", "paused"]


async def test_on_orphan_is_validated_kept_and_shown(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    body = {"name": "odd", "on_orphan": "sometimes", "steps": [{"name": "a"}]}
    refused = await http.post("/v1/workflows", json=body, headers=stack.headers)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "on_orphan"

    plain = await create_workflow(http, stack, "plain", [{"name": "a"}])
    assert plain["on_orphan"] == "fail"
    kept = await create_workflow(http, stack, "kept", [{"name": "a"}], on_orphan="resume")
    again = await http.get(f"/v1/workflows/{kept['id']}", headers=stack.headers)
    assert again.json()["on_orphan"] == "resume"
    run_id = await start_run(http, stack, kept["id"])
    assert await finish(http, stack, run_id) == ev.RUN_COMPLETED
    assert (await get_run(http, stack, run_id))["requeues"] == 0


async def test_retry_with_a_raised_limit_over_http(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    headers = stack.headers
    workflow = await create_workflow(
        http, stack, "Raise", [{"name": "Long", "max_tokens": 10, "params": {"tokens": 30}}]
    )
    run_id = await start_run(http, stack, workflow["id"])
    assert await finish(http, stack, run_id) == ev.RUN_COMPLETED
    step = (await get_run(http, stack, run_id))["steps"][0]
    assert step["truncated"] is True

    for body, field in [
        ({"max_tokens": 0}, "max_tokens"),
        ({"providers": ["local", "nope"]}, "providers[1]"),
    ]:
        refused = await http.post(f"/v1/steps/{step['id']}/retry", json=body, headers=headers)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["field"] == field

    retried = await http.post(
        f"/v1/steps/{step['id']}/retry", json={"max_tokens": 30}, headers=headers
    )
    assert retried.status_code == 201, retried.text
    assert await finish(http, stack, retried.json()["id"]) == ev.RUN_COMPLETED
    done = (await get_run(http, stack, retried.json()["id"]))["steps"][0]
    assert done["truncated"] is False and done["max_tokens"] == 30
    assert len(done["output"].split()) == 30


async def test_hostile_templates_get_a_400_naming_the_field(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    headers = stack.headers
    laughs = "a: &a [x, x]\nb: [*a, *a]\nname: x\nsteps:\n  - name: a\n"
    binary = "name: x\nsteps:\n  - name: a\n    params: {blob: !!binary aGk=}\n"
    for text, field in ((laughs, "template"), (binary, "steps[0].params.blob")):
        refused = await http.post(
            "/v1/workflows/import",
            content=text,
            headers={**headers, "Content-Type": "application/yaml"},
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["field"] == field
    deep = '{"name": "x", "steps": [{"name": "a", "params": {"d": ' + "[" * 5000 + "]" * 5000
    deep += "}}]}"
    response = await http.post(
        "/v1/workflows", content=deep, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert (await http.get("/healthz")).status_code == 200


async def _import(
    http: httpx.AsyncClient, stack: ProcessStack, text: str | bytes
) -> httpx.Response:
    headers = {**stack.headers, "Content-Type": "application/yaml"}
    return await http.post("/v1/workflows/import", content=text, headers=headers)


SEED_NAMES = """
name: Seed names
steps:
  - name: Extend & Improve
    params: {tokens: 4}
  - name: Überblick
    prompt: "Sum up: {{ steps.Extend & Improve.output }}"
    params: {tokens: 4}
  - name: Plan (v2)
    prompt: 'Plan from {{ steps.Überblick.output }}; keep {{ "{{" }} user.name }} as it is'
    params: {tokens: 4}
"""


async def test_any_name_but_braces_is_referenced_over_http(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    imported = await _import(http, stack, SEED_NAMES)
    assert imported.status_code == 201, imported.text
    run_id = await start_run(http, stack, imported.json()["id"])
    assert await finish(http, stack, run_id) == ev.RUN_COMPLETED
    braces = SEED_NAMES.replace("Plan (v2)", "Plan {v2}")
    refused = await _import(http, stack, braces)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "steps[2].name"
    assert 'any character but "{" and "}"' in refused.json()["error"]["message"]


async def test_an_unknown_tool_is_refused_at_creation_over_http(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    text = "name: Tools\nsteps:\n  - name: a\n  - name: Scan\n    kind: tool\n    tool: scan_repo\n"
    assert "scan_repository" in await _refusal(http, stack, text, "steps[1].tool")


async def _refusal(http: httpx.AsyncClient, stack: ProcessStack, text: str, field: str) -> str:
    """The message of an import refused with 400 naming `field`."""
    refused = await _import(http, stack, text)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == field
    message: str = refused.json()["error"]["message"]
    return message


async def test_a_field_its_kind_ignores_and_a_control_character_are_refused_over_http(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    text = "name: Kinds\nsteps:\n  - name: a\n  - name: b\n    tool: echo\n"
    assert "llm steps ignore it" in await _refusal(http, stack, text, "steps[1].tool")
    text = 'name: Kinds\nsteps:\n  - name: a\n  - name: "b\\tc"\n'
    assert "control characters" in await _refusal(http, stack, text, "steps[1].name")


async def test_an_import_that_is_not_utf8_is_refused_naming_the_byte(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    # Latin-1 "é" at byte 9: it was stored as U+FFFD in the workflow's name and prompt.
    raw = "name: Caf\u00e9 plan\nsteps:\n  - name: a\n    prompt: r\u00e9sum\u00e9\n".encode(
        "latin-1"
    )
    refused = await _import(http, stack, raw)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "template"
    assert "not UTF-8 text (byte 9)" in refused.json()["error"]["message"]


async def test_a_project_name_taken_is_a_409_naming_the_name(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """A name another project of the tenant has is a conflict with what exists (409), not a
    malformed request (400), and the error says which field."""
    body = {"name": "Named twice"}
    created = await http.post("/v1/projects", json=body, headers=stack.headers)
    assert created.status_code == 201, created.text

    again = await http.post("/v1/projects", json=body, headers=stack.headers)

    assert again.status_code == 409, again.text
    error = again.json()["error"]
    assert (error["code"], error["field"]) == ("already_exists", "name")
    assert "Named twice" in error["message"]
