"""The built-in code pipelines: ordinary workflow templates over a repository.

They run on the same engine and runs service as every workflow; each step names its phase,
so a run's phase (scanning, analyzing, reporting / improving, reviewing) is its current step's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow.references import literal
from nyxflow.v1 import common_pb2 as pb

CODE_ANALYSIS, AUTO_FIX, REFACTOR = "code-analysis", "auto-fix", "refactor"
PIPELINES = (CODE_ANALYSIS, AUTO_FIX, REFACTOR)
DEFAULT_MAX_FILES = 40
DEFAULT_MAX_BYTES = 200_000
MAX_FILE_BYTES = 20_000  # a larger file goes to the model truncated, and the report says so
TEST_TIMEOUT_S = 300

FINDINGS_FORMAT = (
    "Answer with a JSON array only, one object per finding: "
    '{"file": "<path>", "line": <number>, "severity": "critical|high|medium|low|info", '
    '"category": "<bug|security|performance|style|…>", "message": "<what and why>"}. '
    "Answer [] when there is nothing to report."
)
DIFF_FORMAT = (
    "Answer with one unified diff in a ```diff block, paths relative to the repository root "
    "(--- a/<path> / +++ b/<path>), that applies to the file exactly as shown; answer with an "
    "empty ```diff block when nothing should change."
)


def validate(pipeline: str, goal: str) -> None:
    if pipeline not in PIPELINES:
        raise InvalidArgument(f"one of {', '.join(PIPELINES)}", field="pipeline")
    if pipeline == REFACTOR and not goal.strip():
        raise InvalidArgument("a refactor needs its goal", field="goal")


def pipeline_steps(
    pipeline: str,
    *,
    path: str,
    goal: str = "",
    test_command: str = "",
    max_files: int = 0,
    max_bytes: int = 0,
    providers: Sequence[str] = (),
    params: dict[str, Any] | None = None,
) -> list[pb.StepSpec]:
    validate(pipeline, goal)
    scan: dict[str, Any] = {
        "path": path,
        "max_files": max_files or DEFAULT_MAX_FILES,
        "max_bytes": max_bytes or DEFAULT_MAX_BYTES,
        "max_file_bytes": MAX_FILE_BYTES,
        "group": "directory" if pipeline == CODE_ANALYSIS else "file",
    }
    chain = list(providers)
    params_for_models = dict(params or {})

    def step(name: str, kind: str, phase: str, **fields: Any) -> pb.StepSpec:
        params = fields.pop("params", None)
        if params is not None:
            fields["params_json"] = json.dumps(params)
        if kind in ("llm", "fan_out", "synthesis"):
            fields["providers"] = chain
            if params_for_models:
                fields["params_json"] = json.dumps(params_for_models)
        return pb.StepSpec(name=name, kind=kind, phase=phase, **fields)

    scanning = step("Scan", "tool", "scanning", tool="scan_repository", params=scan)
    if pipeline == CODE_ANALYSIS:
        return [
            scanning,
            step(
                "Analyze",
                "fan_out",
                "analyzing",
                source="Scan",
                split="json",
                concurrency=4,
                persona="Nemesis",
                prompt=(
                    "Review this part of the repository for bugs, security problems and "
                    f"risky code.\n{FINDINGS_FORMAT}\n\n{{{{ item }}}}"
                ),
            ),
            step(
                "Findings",
                "tool",
                "reporting",
                tool="collect_findings",
                prompt="{{ steps.Analyze.output }}",
            ),
            # The scan in brief: the whole of it lists every file and repeats the contents
            # the analysis had, which for a large repository no model could take.
            step(
                "Overview",
                "tool",
                "reporting",
                tool="scan_repository",
                params={"summary": True},
                prompt="{{ steps.Scan.output }}",
            ),
            step(
                "Report",
                "synthesis",
                "reporting",
                persona="Aletheia",
                prompt=(
                    "Write the code-analysis report as markdown: a summary, the findings "
                    "grouped by severity with file:line, and what the scan left out.\n\n"
                    "Scan:\n{{ steps.Overview.output }}\n\n"
                    "Findings:\n{{ steps.Findings.output }}"
                ),
            ),
        ]
    # The goal is the user's text, not a template (a goal may quote Vue's `{{ message }}`).
    aim = literal(goal.strip()) or "fix bugs, security problems and obvious mistakes"
    verb = "Refactor" if pipeline == REFACTOR else "Improve"
    # `scanned`: the prompt opens with the scan, whose `head` the diffs are checked against
    # (the commit the models were shown, wherever HEAD is when the review runs: a checkout
    # or a commit meanwhile, a run paused and resumed); the answers follow it.
    review: dict[str, Any] = {"path": path, "test_timeout_s": TEST_TIMEOUT_S, "scanned": True}
    if test_command:
        review["test_command"] = test_command
    return [
        scanning,
        step(
            "Improve",
            "fan_out",
            "improving",
            source="Scan",
            split="json",
            concurrency=4,
            prompt=f"{verb} this file. Goal: {aim}.\n{DIFF_FORMAT}\n\n{{{{ item }}}}",
        ),
        step(
            "Review",
            "tool",
            "reviewing",
            tool="review_patches",
            params=review,
            prompt="{{ steps.Scan.output }}\n\n{{ steps.Improve.output }}",
        ),
    ]
