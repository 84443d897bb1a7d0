"""Run and step statuses and event types: the vocabulary every service shares."""

from __future__ import annotations

from typing import Final

# Run statuses.
PENDING: Final = "pending"
RUNNING: Final = "running"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
PAUSED: Final = "paused"
CANCELLED: Final = "cancelled"
SKIPPED: Final = "skipped"

ACTIVE_RUN_STATUSES: Final = frozenset({PENDING, RUNNING})
FINISHED_RUN_STATUSES: Final = frozenset({COMPLETED, FAILED, PAUSED, CANCELLED})
RUN_STATUSES: Final = ACTIVE_RUN_STATUSES | FINISHED_RUN_STATUSES
STEP_STATUSES: Final = frozenset({PENDING, RUNNING, COMPLETED, FAILED, SKIPPED, CANCELLED})

# Event types.
RUN_STARTED: Final = "run_started"
STEP_STARTED: Final = "step_started"
STEP_DELTA: Final = "step_delta"
STEP_COMPLETED: Final = "step_completed"
STEP_FAILED: Final = "step_failed"
STEP_TRUNCATED: Final = "step_truncated"
PROVIDER_FALLBACK: Final = "provider_fallback"
FAN_OUT_PROGRESS: Final = "fan_out_progress"
STEPS_GENERATED: Final = "steps_generated"
RUN_PAUSED: Final = "run_paused"
RUN_COMPLETED: Final = "run_completed"
RUN_FAILED: Final = "run_failed"
RUN_CANCELLED: Final = "run_cancelled"
# Written by runs alone: the sweeper put an orphan back to pending, or a draining engine
# handed its run over (the workflow's on_orphan is "resume"); an engine adopts it next.
RUN_REQUEUED: Final = "run_requeued"
# Operations, recorded as the first event of the run they create.
STEP_RETRIED: Final = "step_retried"
WORKFLOW_RESUMED: Final = "workflow_resumed"
WORKFLOW_RERUN: Final = "workflow_rerun"
# Choosing another output of a step dropped what its old one generated: a paused run records
# it, so that the workflow reads as unfinished and resume generates from the chosen output.
ALTERNATIVE_SELECTED: Final = "alternative_selected"

EVENT_TYPES: Final = frozenset(
    {
        RUN_STARTED,
        STEP_STARTED,
        STEP_DELTA,
        STEP_COMPLETED,
        STEP_FAILED,
        STEP_TRUNCATED,
        PROVIDER_FALLBACK,
        FAN_OUT_PROGRESS,
        STEPS_GENERATED,
        RUN_PAUSED,
        RUN_COMPLETED,
        RUN_FAILED,
        RUN_CANCELLED,
        RUN_REQUEUED,
        STEP_RETRIED,
        WORKFLOW_RESUMED,
        WORKFLOW_RERUN,
        ALTERNATIVE_SELECTED,
    }
)

TERMINAL_EVENT_FOR_STATUS: Final = {
    COMPLETED: RUN_COMPLETED,
    FAILED: RUN_FAILED,
    PAUSED: RUN_PAUSED,
    CANCELLED: RUN_CANCELLED,
}
TERMINAL_EVENTS: Final = frozenset(TERMINAL_EVENT_FOR_STATUS.values())

ORPHAN_ERROR: Final = "orphaned: lease expired"

# What the sweeper does with a run whose lease expired (the workflow's on_orphan).
ON_ORPHAN_FAIL: Final = "fail"
ON_ORPHAN_RESUME: Final = "resume"
ON_ORPHAN_POLICIES: Final = (ON_ORPHAN_FAIL, ON_ORPHAN_RESUME)
# A run goes back to pending at most this often (sweeps and drains together); then an orphan
# fails like any other and a drain pauses it, so a run whose steps kill their engine does not
# go round for ever.
MAX_REQUEUES: Final = 5
