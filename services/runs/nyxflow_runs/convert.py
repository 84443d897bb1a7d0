"""Rows → protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Sequence

from nyxflow.v1 import common_pb2 as pb
from nyxflow_runs import models


def step(row: models.Step) -> pb.Step:
    return pb.Step(
        id=row.id,
        order=row.position,
        name=row.name,
        kind=row.kind,
        prompt=row.prompt,
        provider=row.provider,
        model=row.model,
        params_json=json.dumps(row.params or {}),
        max_tokens=row.max_tokens,
        status=row.status,
        output=row.output or "",
        error=row.error or "",
        auto_generated=row.auto_generated,
        truncated=row.truncated,
        finish_reason=row.finish_reason or "",
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        served_by=row.served_by or "",
        started_at=row.started_at or 0.0,
        finished_at=row.finished_at or 0.0,
    )


def workflow(row: models.Workflow, steps: Sequence[models.Step]) -> pb.Workflow:
    return pb.Workflow(
        id=row.id,
        name=row.name,
        steps=[step(s) for s in steps],
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def run(row: models.Run, steps: Sequence[models.Step] = ()) -> pb.Run:
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
        steps=[step(s) for s in steps],
    )


def event(row: models.RunEvent) -> pb.RunEvent:
    return pb.RunEvent(
        run_id=row.run_id,
        seq=row.seq,
        type=row.type,
        data_json=json.dumps(row.data or {}),
        created_at=row.created_at,
    )
