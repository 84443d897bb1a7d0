"""The demo workflow `nyxflow up` creates, so there is something to watch at once."""

from __future__ import annotations

import json

from nyxflow.auth import Metadata
from nyxflow.client import RunsClient, open_channel
from nyxflow.v1 import common_pb2 as pb

STEPS = [
    ("Outline", "Outline a plan for a durable workflow engine.", {"items": 5, "tokens": 40}),
    ("Expand", "Expand each point:\n{{ steps.Outline.output }}", {"tokens": 120}),
    ("Review", "Review for contradictions:\n{{ steps.Expand.output }}", {"tokens": 60}),
]


async def create_demo(runs_addr: str, md: Metadata) -> tuple[pb.Workflow, pb.Run]:
    async with open_channel(runs_addr) as channel:
        runs = RunsClient(channel, md)
        specs = [
            pb.StepSpec(
                name=name,
                kind="llm",
                prompt=prompt,
                provider="local",
                params_json=json.dumps({**params, "token_delay_ms": 40}),
            )
            for name, prompt, params in STEPS
        ]
        workflow = await runs.create_workflow("Demo: plan, expand, review", specs)
        return workflow, await runs.create_run(workflow.id)
