"""/v1/runs: read, list, pause, cancel, a step's items page by page, and the SSE stream of
events."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from nyxflow import events as ev
from nyxflow.errors import InvalidArgument
from nyxflow.templates import INT32_MAX
from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway import convert
from nyxflow_gateway.deps import Clients, Services, StreamClients
from nyxflow_gateway.routes import NoBody
from nyxflow_gateway.sse import MEDIA_TYPE, EventStream
from nyxflow_gateway.stored import MAX_EVENTS, stored_events

router = APIRouter(prefix="/v1/runs", tags=["runs"])
SEQ = re.compile(r"[0-9]{1,18}")  # not \d: int() would take "٣" too
MAX_ITEMS = 500  # per call, as runs allows
MAX_SEQ = 10**18 - 1  # what SEQ lets through


def parse_last_event_id(header: str | None, query: str | None) -> int:
    raw = header if header is not None else query
    if raw is None or raw == "":
        return 0
    if not SEQ.fullmatch(raw.strip()):
        field = "Last-Event-ID" if header is not None else "last_event_id"
        raise InvalidArgument("must be a non-negative integer (an event's seq)", field=field)
    return int(raw)


@router.get("")
async def list_runs(
    services: Clients,
    workflow_id: str = "",
    status: str = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    page_token: str = "",
) -> dict[str, Any]:
    """The newest runs first; `next_page_token`, when not null, is the `page_token` of the
    next (older) page, with the same filters."""
    page = await services.runs.list_runs_page(workflow_id, status, limit, page_token)
    return {
        "runs": [convert.run(r) for r in page.runs],
        "next_page_token": page.next_page_token or None,
    }


@router.get("/{run_id}")
async def get_run(run_id: str, services: Clients) -> dict[str, Any]:
    return convert.run(await services.runs.get_run(run_id))


@router.get("/{run_id}/steps/{step_id}/items")
async def list_step_items(
    run_id: str,
    step_id: str,
    services: Clients,
    from_index: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_ITEMS)] = 100,
) -> dict[str, Any]:
    """A fan-out step's stored items from `from_index` on, in index order, with about 1 MB of
    output at most; `next_index`, when not null, is where the next page begins. A page
    following a run fetches the items its fan_out_progress events announced this way, not the
    whole run again."""
    page = await services.runs.list_step_items(run_id, step_id, from_index, limit)
    return {
        "items": [convert.item(i) for i in page.items],
        "next_index": page.next_index if page.HasField("next_index") else None,
    }


@router.post("/{run_id}/pause")
async def pause_run(run_id: str, services: Clients, body: NoBody | None = None) -> dict[str, Any]:
    return convert.run(await services.runs.pause_run(run_id))


@router.post("/{run_id}/cancel")
async def cancel_run(run_id: str, services: Clients, body: NoBody | None = None) -> dict[str, Any]:
    return convert.run(await services.runs.cancel_run(run_id))


async def brief_run(request: Request, services: Services, run_id: str) -> pb.Run:
    """The run without its steps. Browsers that ask together with one key share the call
    (coalesce.py): a thousand reconnecting, or polling, at once."""
    return await request.app.state.run_status.get(  # type: ignore[no-any-return]
        (services, run_id), lambda: services.runs.get_run(run_id, brief=True)
    )


@router.get("/{run_id}/events/stored")
async def list_run_events(
    run_id: str,
    request: Request,
    services: Clients,
    after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = MAX_EVENTS,
    types: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    """The run's stored events after `after_seq`, in seq order, each as the SSE stream's
    `data` (with its `seq` and `type`), with about 1 MB of data at most, and the run's
    `status`, `error` and `last_seq` as they were just before: more is to be had while
    `read_through` (the next call's `after_seq`) is below `last_seq`. What a page polls when
    it has no event stream: only what changed, never the whole run again. `types` (repeated,
    or comma-separated) gives only events of those types: a finished run's fallback notes
    without every delta of every step."""
    run = await brief_run(request, services, run_id)
    if types:
        wanted = [t.strip() for value in types for t in value.split(",") if t.strip()]
        page = await services.runs.list_run_events(run_id, wanted, after_seq, limit)
        return {
            "status": run.status,
            "error": run.error or None,
            "last_seq": page.last_seq,
            "read_through": page.read_through_seq,
            "events": [convert.event(e) for e in page.events],
        }
    through = min(run.last_seq, after_seq + limit)
    events = (
        await stored_events(services, run_id, after_seq, through, limit)
        if after_seq < through
        else []
    )
    return {
        "status": run.status,
        "error": run.error or None,
        "last_seq": run.last_seq,
        "read_through": events[-1].seq if events else after_seq,
        "events": [convert.event(e) for e in events],
    }


@router.get(
    "/{run_id}/events",
    response_class=StreamingResponse,  # for the OpenAPI document; EventStream is returned
    responses={
        200: {"content": {MEDIA_TYPE.split(";")[0]: {}}},
        204: {"description": "the run has finished and has no event after Last-Event-ID"},
    },
)
async def run_events(
    run_id: str,
    request: Request,
    services: StreamClients,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: str | None = None,
) -> Response:
    """Starts the run if it is pending, else follows it; replays after Last-Event-ID. A
    finished run with nothing after it answers 204, which tells EventSource to stop."""
    after = parse_last_event_id(last_event_id_header, last_event_id)
    # 401 / 404 before any stream opens; the status decides start or follow.
    state = request.app.state
    run = await brief_run(request, services, run_id)
    # A Last-Event-ID past the run's last event (made up, or kept across a database restored
    # to an earlier point): the database is the truth, so the stream goes on from its end.
    after = min(after, run.last_seq)
    if run.status in ev.FINISHED_RUN_STATUSES and after == run.last_seq:
        # An empty 200 that closed made EventSource reconnect every few seconds, for ever.
        return Response(status_code=204, headers={"Cache-Control": "no-cache"})
    return EventStream(
        state.hub, services, run_id, run.status, after, state.settings, history_seq=run.last_seq
    )
