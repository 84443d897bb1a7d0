"""JSON log lines carry the run, step and tenant of the task that logged them, and no other's."""

from __future__ import annotations

import asyncio
import json
import logging

from nyxflow import logs


def line(record_msg: str) -> dict[str, object]:
    record = logging.makeLogRecord({"msg": record_msg, "levelno": 20, "levelname": "INFO"})
    parsed: dict[str, object] = json.loads(logs.JsonFormatter("engine").format(record))
    return parsed


async def test_bound_fields_stay_with_their_task() -> None:
    seen: dict[str, dict[str, object]] = {}

    async def run(run_id: str, tenant: str) -> None:
        logs.bind(run_id=run_id, tenant=tenant)
        await asyncio.sleep(0)  # interleave with the other run
        with logs.bound(step_id=f"{run_id}-s1"):
            seen[f"{run_id}-step"] = line("step started")
        seen[run_id] = line("run done")

    await asyncio.gather(run("r1", "t1"), run("r2", "t2"))

    step = seen["r1-step"]
    assert (step["run_id"], step["tenant"], step["step_id"]) == ("r1", "t1", "r1-s1")
    assert seen["r2-step"]["step_id"] == "r2-s1" and seen["r2-step"]["tenant"] == "t2"
    assert "step_id" not in seen["r1"] and seen["r1"]["run_id"] == "r1"
    assert "run_id" not in line("outside any run")


def test_a_key_in_a_logged_url_is_hidden() -> None:
    said = line("GET /v1/runs/r1/events?last_event_id=3&access_token=s3cr3t HTTP/1.1")["msg"]
    assert said == "GET /v1/runs/r1/events?last_event_id=3&access_token=*** HTTP/1.1"
    assert line("monkey=business api_key=abc")["msg"] == "monkey=business api_key=***"
