"""Protobuf messages → the JSON the API returns (timestamps as ISO-8601, objects decoded)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2


def when(epoch: float) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch else None


def _object(raw: str) -> dict[str, Any]:
    value = json.loads(raw) if raw else {}
    return value if isinstance(value, dict) else {}


def item(i: pb.StepItem) -> dict[str, Any]:
    return {
        "index": i.index,
        "heading": i.heading,
        # null: a whole run's read left it out (its budget); the step's items list has it
        "output": None if i.output_left_out else i.output,
        "truncated": i.truncated,
        "input_tokens": i.input_tokens,
        "output_tokens": i.output_tokens,
        "served_by": i.served_by,
    }


def step(s: pb.Step) -> dict[str, Any]:
    spec = s.spec
    return {
        "id": s.id,
        "order": s.order,
        "name": s.name,
        "kind": s.kind,
        "prompt": s.prompt,
        "persona": spec.persona,
        "provider": s.provider,
        "model": s.model,
        "providers": list(s.providers),
        "params": _object(s.params_json) if s.params_json else None,  # null: listed
        "max_tokens": s.max_tokens,
        "alternatives_count": spec.alternatives,
        "auto_continue": spec.auto_continue,
        "source": spec.source,
        "split": spec.split,
        "concurrency": spec.concurrency,
        "generates": spec.generates,
        "reviews": list(spec.reviews),
        "tool": spec.tool,
        "status": s.status,
        # null: a whole read left it out (its budget), and the alternatives with it; the
        # step's own route (GET /v1/steps/{id}) has them
        "output": None if s.output_left_out else s.output,
        "output_left_out": s.output_left_out,
        "error": s.error or None,
        "auto_generated": s.auto_generated,
        "truncated": s.truncated,
        "finish_reason": s.finish_reason or None,
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
        "served_by": s.served_by or None,
        "selected_index": s.selected_index,
        "alternatives": [
            {
                "index": a.index,
                "output": a.output,
                "finish_reason": a.finish_reason,
                "truncated": a.truncated,
                "input_tokens": a.input_tokens,
                "output_tokens": a.output_tokens,
                "served_by": a.served_by,
            }
            for a in s.alternatives
        ],
        "items": [item(i) for i in s.items],
        # stored items past the last listed: a whole read lists a fan-out's first ones only;
        # GET /v1/runs/{id}/steps/{step_id}/items has them all
        "items_left_out": s.items_left_out,
        "started_at": when(s.started_at),
        "finished_at": when(s.finished_at),
    }


def workflow(w: pb.Workflow) -> dict[str, Any]:
    return {
        "id": w.id,
        "name": w.name,
        "status": w.status,
        "last_run_id": w.last_run_id or None,
        "consistency_check": w.consistency_check,
        "on_orphan": w.on_orphan or "fail",
        "default_providers": list(w.default_providers),
        "project_id": w.project_id or None,
        "created_at": when(w.created_at),
        "updated_at": when(w.updated_at),
        "steps": [step(s) for s in w.steps],
    }


def run(r: pb.Run) -> dict[str, Any]:
    return {
        "id": r.id,
        "workflow_id": r.workflow_id,
        "status": r.status,
        "error": r.error or None,
        "last_seq": r.last_seq,
        "pause_requested": r.pause_requested,
        "requeues": r.requeues,
        "superseded_by": r.superseded_by or None,
        "phase": r.phase or None,
        "created_at": when(r.created_at),
        "started_at": when(r.started_at),
        "finished_at": when(r.finished_at),
        "steps": [step(s) for s in r.steps],
    }


def persona(p: pb.Persona) -> dict[str, Any]:
    return {"name": p.name, "role": p.role, "system_prompt": p.system_prompt, "builtin": p.builtin}


def event(e: pb.RunEvent) -> dict[str, Any]:
    """An event as the page applies it: its own data plus seq, type, run id and the time it
    was persisted (epoch seconds, the database's clock)."""
    return {
        **_object(e.data_json),
        "seq": e.seq,
        "type": e.type,
        "run_id": e.run_id,
        "at": round(e.created_at, 6),
    }


def event_data(e: pb.RunEvent) -> str:
    """An event's SSE data: `event`, as one JSON object, its text as UTF-8 (ASCII-escaped, a
    CJK character took 6 bytes, an emoji 12; SSE ends lines at CR and LF only, which JSON
    escapes)."""
    return json.dumps(event(e), ensure_ascii=False)


def repository(r: runs_pb2.Repository) -> dict[str, Any]:
    return {
        "id": r.id,
        "project_id": r.project_id,
        "owner": r.owner,
        "repo": r.repo,
        "path": r.path,
        "created_at": when(r.created_at),
    }


def note(n: runs_pb2.ProjectNote) -> dict[str, Any]:
    return {
        "id": n.id,
        "project_id": n.project_id,
        "text": n.text,
        "created_at": when(n.created_at),
    }


def insight(i: runs_pb2.WorkflowInsight) -> dict[str, Any]:
    return {
        "id": i.id,
        "workflow_id": i.workflow_id,
        "text": i.text,
        "created_at": when(i.created_at),
    }


def project(p: runs_pb2.Project) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "created_at": when(p.created_at),
        "repositories": [repository(r) for r in p.repositories],
        "notes": [note(n) for n in p.notes],  # newest first, bounded: runs.proto's Project
        "notes_left_out": p.notes_left_out,
        "notes_cut": p.notes_cut,
        "workflow_ids": list(p.workflow_ids),
    }


def finding(f: pb.Finding) -> dict[str, Any]:
    return {
        "file": f.file,
        "line": f.line,
        "severity": f.severity,
        "category": f.category,
        "message": f.message,
        "step_id": f.step_id,
    }
