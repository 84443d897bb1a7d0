"""Rows → protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from nyxflow.chains import on_model
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_runs import models

IDLE = "idle"


def spec(row: models.Step, listed: bool = False) -> pb.StepSpec:
    """`listed`: without the prompt and params, whose columns the caller did not load (see
    `step`)."""
    config: dict[str, Any] = row.config or {}
    return pb.StepSpec(
        name=row.name,
        kind=row.kind,
        prompt="" if listed else row.prompt,
        provider=row.provider,
        model=row.model,
        params_json="" if listed else json.dumps(row.params or {}),
        max_tokens=row.max_tokens,
        persona=row.persona,
        alternatives=row.alternatives,
        auto_continue=row.auto_continue,
        source=config.get("source", ""),
        split=config.get("split", ""),
        concurrency=config.get("concurrency", 0),
        generates=config.get("generates", ""),
        reviews=config.get("reviews", []),
        tool=config.get("tool", ""),
        providers=config.get("providers", []),
        phase=config.get("phase", ""),
    )


def alternative(index: int, value: dict[str, Any]) -> pb.Alternative:
    return pb.Alternative(
        index=index,
        output=value.get("output", ""),
        finish_reason=value.get("finish_reason", ""),
        truncated=bool(value.get("truncated", False)),
        input_tokens=int(value.get("input_tokens", 0)),
        output_tokens=int(value.get("output_tokens", 0)),
        served_by=value.get("served_by", ""),
    )


def alternative_dict(alt: pb.Alternative) -> dict[str, Any]:
    return {
        "output": alt.output,
        "finish_reason": alt.finish_reason,
        "truncated": alt.truncated,
        "input_tokens": alt.input_tokens,
        "output_tokens": alt.output_tokens,
        "served_by": alt.served_by,
    }


def chain(row: models.Step, default: Sequence[str] = ()) -> list[str]:
    """The step's own chain, else its provider[:model], else the workflow's or tenant's, whose
    first entry serves the step's own model where it names one: a default's model is a
    default, and the step's, named for it, would otherwise be ignored (the engine serves an
    entry's model over the step's)."""
    own: list[str] = (row.config or {}).get("providers", [])
    if own:
        return own
    if row.provider:
        return [f"{row.provider}:{row.model}" if row.model else row.provider]
    return on_model(default, row.model)


def item(row: models.StepItem) -> pb.StepItem:
    """An output of None is one a whole read left out (store/base.py, ITEM_OUTPUTS_PER_READ)."""
    return pb.StepItem(
        index=row.item_index,
        heading=row.heading,
        output=row.output or "",
        output_left_out=row.output is None,
        truncated=row.truncated,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        input_hash=row.input_hash or "",
        served_by=row.served_by or "",
    )


def step(
    row: models.Step,
    items: Sequence[models.StepItem] = (),
    system_prompt: str = "",
    default_chain: Sequence[str] = (),
    brief: bool = False,
    left_out: bool = False,
    listed: bool = False,
) -> pb.Step:
    """`brief`: the step without what it produced (output, alternatives; its items are the
    caller's to leave out), whose columns the caller did not load. `left_out`: the same, for
    a whole read past its budget, said in `output_left_out` (store/base.py). `listed`: brief,
    and without its prompt or params (a generated implementation prompt runs to many kilobytes,
    params as far as the message allows, and a tenant's list of 500 workflows outgrew a
    message), nor its persona's system prompt."""
    bare = brief or left_out or listed
    return pb.Step(
        id=row.id,
        order=row.position,
        name=row.name,
        kind=row.kind,
        prompt="" if listed else row.prompt,
        provider=row.provider,
        model=row.model,
        params_json="" if listed else json.dumps(row.params or {}),
        max_tokens=row.max_tokens,
        status=row.status,
        output="" if bare else row.output or "",
        error=row.error or "",
        auto_generated=row.auto_generated,
        truncated=row.truncated,
        finish_reason=row.finish_reason or "",
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        served_by=row.served_by or "",
        started_at=row.started_at or 0.0,
        finished_at=row.finished_at or 0.0,
        spec=spec(row, listed),
        system_prompt="" if listed else system_prompt,
        selected_index=row.selected_index,
        alternatives=[]
        if bare
        else [alternative(i, a) for i, a in enumerate(row.alternatives_out or [])],
        items=[item(i) for i in items],
        providers=chain(row, default_chain),
        output_left_out=left_out,
    )


def drafted(
    rows: Sequence[models.Step], personas: Mapping[str, str], default_chain: Sequence[str]
) -> list[pb.Step]:
    """Steps not stored yet as a write that stores them will answer with them, to be weighed
    before it does (validation.answer_fits); their ids, status and times come with the write."""
    return [
        step(r, system_prompt=personas.get(r.persona, ""), default_chain=default_chain)
        for r in rows
    ]


def workflow(
    row: models.Workflow, steps: Sequence[pb.Step], latest: models.Run | None = None
) -> pb.Workflow:
    return pb.Workflow(
        id=row.id,
        name=row.name,
        steps=steps,
        created_at=row.created_at,
        updated_at=row.updated_at,
        consistency_check=row.consistency_check,
        status=latest.status if latest is not None else IDLE,
        last_run_id=latest.id if latest is not None else "",
        default_providers=row.default_providers or [],
        project_id=row.project_id or "",
        on_orphan=row.on_orphan,
    )


def phase(steps: Sequence[pb.Step]) -> str:
    """A pipeline run's phase: its running step's, else where it failed, was cancelled or will
    go on, else the last one's."""
    phased = [s for s in steps if s.spec.phase]
    for status in ("running", "failed", "cancelled", "pending"):
        for s in phased:
            if s.status == status:
                return s.spec.phase
    return phased[-1].spec.phase if phased else ""


def run(row: models.Run, steps: Sequence[pb.Step] = ()) -> pb.Run:
    return pb.Run(
        id=row.id,
        workflow_id=row.workflow_id,
        tenant_id=row.tenant_id,
        status=row.status,
        error=row.error or "",
        last_seq=row.last_seq,
        created_at=row.created_at,
        started_at=row.started_at or 0.0,
        finished_at=row.finished_at or 0.0,
        steps=steps,
        pause_requested=row.pause_requested,
        phase=phase(steps),
        requeues=row.requeues,
    )


def event_row(row: Any) -> pb.RunEvent:
    """From a Core result row (the hot path), same as `event` from an ORM object."""
    return event(row)


def event(row: models.RunEvent) -> pb.RunEvent:
    return pb.RunEvent(
        run_id=row.run_id,
        seq=row.seq,
        type=row.type,
        data_json=json.dumps(row.data or {}, ensure_ascii=False),
        created_at=row.created_at,
    )


def repository(row: models.Repository) -> runs_pb2.Repository:
    return runs_pb2.Repository(
        id=row.id,
        project_id=row.project_id,
        owner=row.owner,
        repo=row.repo,
        path=row.path,
        created_at=row.created_at,
    )


def note(row: models.ProjectNote) -> runs_pb2.ProjectNote:
    return runs_pb2.ProjectNote(
        id=row.id, project_id=row.project_id, text=row.text, created_at=row.created_at
    )


def insight(row: models.WorkflowInsight) -> runs_pb2.WorkflowInsight:
    return runs_pb2.WorkflowInsight(
        id=row.id, workflow_id=row.workflow_id, text=row.text, created_at=row.created_at
    )


def project(
    row: models.Project,
    repositories: Sequence[models.Repository] = (),
    workflow_ids: Sequence[str] = (),
) -> runs_pb2.Project:
    """Without its notes: the store reads them within a bound (store/projects.py)."""
    return runs_pb2.Project(
        id=row.id,
        name=row.name,
        created_at=row.created_at,
        repositories=[repository(r) for r in repositories],
        workflow_ids=workflow_ids,
    )
