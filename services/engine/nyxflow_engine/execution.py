"""One claimed run, executing in a task the engine owns: steps in order, lease renewed by
heartbeat, and every way out (success, step error, bug, pause, cancel, shutdown, lost lease)
written to the database before anything else."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from nyxflow import constants as kinds
from nyxflow import events as ev
from nyxflow import logs, metrics
from nyxflow.errors import InvalidArgument, NyxflowError
from nyxflow.tasks import cancel_and_wait
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_engine.cut_off import Outputs
from nyxflow_engine.providers.base import Completion
from nyxflow_engine.providers.registry import Providers
from nyxflow_engine.settings import EngineSettings
from nyxflow_engine.steps.context import PauseRequested, StepContext, StepResult
from nyxflow_engine.steps.generation import (
    already_generated,
    check_generatable,
    generated_specs,
)
from nyxflow_engine.steps.registry import runner_for
from nyxflow_engine.tools.sandbox import Sandbox
from nyxflow_engine.writer import LeaseLost, RunWriter, draft

log = logging.getLogger(__name__)

SHUTDOWN_ERROR = "engine shut down"
CANCELLED_ERROR = "execution cancelled"
PAUSED_BY_USER = "paused by user"


# Renewals in flight at once: one that never answers does not stop the next, and a slow one
# is not cancelled (it may yet land) while another is tried.
HEARTBEATS_IN_FLIGHT = 3
# The longest output (in characters: at most 4 MiB of UTF-8) step_completed carries; a longer
# one is left out (`output_left_out`), and followers read it from the step.
EVENT_OUTPUT_CHARS = 1 << 20


class StepFailed(Exception):
    """A step failed; it is already marked failed in the database."""


def describe(error: BaseException) -> str:
    if isinstance(error, NyxflowError):
        return f"{error.field}: {error.message}" if error.field else error.message
    return f"{type(error).__name__}: {error}"


def unmarked_cut(step: pb.Step, truncated: bool) -> bool:
    """Whether `step`'s output stopped at its token limit with nothing in it saying so: a
    fan-out's joined output marks each cut item where it is (steps/fan_out.py)."""
    return truncated and step.kind != kinds.FAN_OUT


class Execution:
    def __init__(
        self,
        writer: RunWriter,
        run: pb.Run,
        settings: EngineSettings,
        providers: Providers,
    ) -> None:
        self.writer = writer
        self.run_id = writer.run_id
        self._run_pb = run
        self._settings = settings
        self._providers = providers
        self._pausing = False
        self._lease_lost = False
        # A step failed for good and its failure is being written: the run ends failed. A
        # drain cancelling that write would hand the run over (or pause it), and the failed
        # step would run again, past the retries its workflow allows.
        self._failing = False
        self._with_check: bool | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._run(), name=f"run-{self.run_id}")
        return self.task

    def pause(self) -> None:
        """Graceful shutdown: stop, and leave the run to another replica (on_orphan: resume)
        or paused, to be resumed. A run whose end is already on its way is left to finish:
        cancelled, it would stop awaiting the end's answer, and its callers' streams would
        close without the terminal event though the run ended (the drain waits for it)."""
        self._pausing = True
        if self.task is not None and not self.writer.ending and not self._failing:
            self.task.cancel()

    async def _run(self) -> None:
        logs.bind(run_id=self.run_id, tenant=self._run_pb.tenant_id)
        extra = {"run_id": self.run_id}
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"heartbeat-{self.run_id}")
        try:
            await self._execute_steps()
            await self.writer.finish(ev.COMPLETED)
            metrics.RUNS_FINISHED.labels(status=ev.COMPLETED).inc()
            log.info("run completed", extra=extra)
        except PauseRequested:
            await self._finish_quietly(ev.PAUSED, PAUSED_BY_USER)
        except LeaseLost as error:
            log.warning(
                "lease lost; stopping, writing nothing", extra={**extra, "error": str(error)}
            )
        except asyncio.CancelledError:
            if self._lease_lost:
                pass
            elif self._pausing:
                await self._release_quietly()
            else:
                await self._finish_quietly(ev.FAILED, CANCELLED_ERROR)
            raise
        except StepFailed as error:
            log.warning("run failed", extra={**extra, "error": str(error)})
            await self._finish_quietly(ev.FAILED, str(error))
        except Exception as error:
            log.exception("run crashed", extra=extra)
            await self._finish_quietly(ev.FAILED, describe(error))
        finally:
            await self.writer.close()
            await cancel_and_wait(heartbeat)
            await self.writer.feed.close()

    async def _finish_quietly(self, status: str, error: str) -> None:
        """Best effort: if even this write fails, the sweeper fails the run after its lease."""
        try:
            await self.writer.finish(status, error)
            metrics.RUNS_FINISHED.labels(status=status).inc()
        except LeaseLost:
            pass
        except Exception:
            log.exception("could not record the run's end", extra={"run_id": self.run_id})

    async def _release_quietly(self) -> None:
        """Draining: another replica takes the run over (on_orphan: resume), else it pauses.
        If runs cannot be told, the sweeper deals with the run after its lease."""
        try:
            status = await self.writer.release(SHUTDOWN_ERROR)
            if status == ev.PAUSED:
                metrics.RUNS_FINISHED.labels(status=status).inc()
            log.info("run released", extra={"run_id": self.run_id, "status": status})
        except LeaseLost:
            pass
        except Exception:
            log.exception("could not release the run", extra={"run_id": self.run_id})

    async def _heartbeat(self) -> None:
        """A renewal every `heartbeat_s`, whether or not the last one has answered: one that
        hangs (a stalled runs replica, a half-open connection) would otherwise hold the next
        until the RPC timeout, past a short lease, and a live run would be swept. Each is
        given up after the lease's TTL, when its answer could no longer help."""
        settings = self._settings
        beats: set[asyncio.Task[None]] = set()
        try:
            while not self._lease_lost:
                await asyncio.sleep(settings.heartbeat_s)
                if len(beats) < HEARTBEATS_IN_FLIGHT:
                    beat = asyncio.create_task(self._beat(), name=f"beat-{self.run_id}")
                    beats.add(beat)
                    beat.add_done_callback(beats.discard)
        finally:
            for beat in beats:
                beat.cancel()

    async def _beat(self) -> None:
        settings = self._settings
        timeout_s = min(settings.rpc_timeout_s, settings.lease_ttl_s)
        try:
            await self.writer.heartbeat(settings.lease_ttl_s, timeout_s)
            metrics.LEASE_RENEWALS.inc()
        except LeaseLost as error:
            if self._lease_lost or self.writer.ending:
                return  # known already, or the run's end landed first (writer.ending)
            # Swept, cancelled or reclaimed: a zombie must stop, writing nothing.
            log.warning(
                "lease lost; stopping, writing nothing",
                extra={"run_id": self.run_id, "error": str(error)},
            )
            self._lease_lost = True
            if self.task is not None:
                self.task.cancel()
        except Exception as error:
            log.warning("heartbeat failed", extra={"run_id": self.run_id, "error": str(error)})

    async def _execute_steps(self) -> None:
        """Resume semantics: every step not completed runs, in order, whatever follows it.

        The list can grow while we go (a synthesis generates steps right after itself)."""
        steps: Sequence[pb.Step] = list(self._run_pb.steps)
        await self.writer.fill_left_out(steps)
        # Passed on marked where cut, a resumed run's stored steps by their flag: a cut
        # answer often reads whole, and a later prompt would build on it as if it were.
        outputs = Outputs()
        for s in steps:
            if s.status == ev.COMPLETED:
                outputs.put(s.name, s.output, unmarked_cut(s, s.truncated))
        position = 0
        while position < len(steps):
            step = steps[position]
            executed = step.status != ev.COMPLETED
            if executed:
                if self.writer.pause_requested:
                    raise PauseRequested()
                # The last step's result travels with the run's end: one write, not two.
                last = position == len(steps) - 1 and not step.spec.generates
                with logs.bound(step_id=step.id):
                    result = await self._execute_step(step, steps, outputs, last)
                outputs.put(step.name, result.output, unmarked_cut(step, result.truncated))
                done = pb.Step()
                done.CopyFrom(step)
                done.status, done.output = ev.COMPLETED, result.output
                done.truncated = result.truncated  # what it generates says where it was cut
                step = done
            # Executed again, its output is new: whatever it generated before is stale, and
            # runs replaces that block with what this output generates.
            if step.spec.generates and (executed or not already_generated(step, steps)):
                await self._generate_or_fail(step, steps)
                steps = await self.writer.current_steps()
            position += 1

    async def _consistency_check(self) -> bool:
        """The workflow's setting, read once: a synthesis is checked and generates with it."""
        if self._with_check is None:
            workflow = await self.writer.workflow(self._run_pb.workflow_id)
            self._with_check = workflow.consistency_check
        return self._with_check

    async def _generate_or_fail(self, synthesis: pb.Step, steps: Sequence[pb.Step]) -> None:
        """Runs refusing what an output generates is no passing fault: left completed, the
        synthesis would generate the same on each resume and be refused again, for ever. It
        fails instead, so that a resume or a retry (another prompt, persona or limit) makes
        it anew."""
        try:
            await self._generate(synthesis, steps)
        except InvalidArgument as refusal:
            message = f"its steps could not be generated: {describe(refusal)}"
            self._failing = True
            await self.writer.step(
                synthesis.id,
                runs_pb2.StepChange(status=ev.FAILED, error=message),
                draft(ev.STEP_FAILED, step_id=synthesis.id, name=synthesis.name, error=message),
                durable=True,
            )
            raise StepFailed(f"step {synthesis.name!r} failed: {message}") from refusal

    async def _generate(self, synthesis: pb.Step, steps: Sequence[pb.Step]) -> None:
        specs = generated_specs(synthesis, steps, await self._consistency_check())
        await self.writer.generate(
            synthesis.id,
            specs,
            draft(
                ev.STEPS_GENERATED,
                after_step_id=synthesis.id,
                count=len(specs),
                names=[s.name for s in specs],
            ),
        )

    async def _execute_step(
        self, step: pb.Step, steps: Sequence[pb.Step], outputs: Outputs, last: bool
    ) -> StepResult:
        ids = {"step_id": step.id, "name": step.name}
        await self.writer.step(
            step.id,
            runs_pb2.StepChange(status=ev.RUNNING),
            draft(
                ev.STEP_STARTED,
                **ids,
                kind=step.kind,
                order=step.order,
                **({"phase": step.spec.phase} if step.spec.phase else {}),
            ),
        )
        context = StepContext(
            step,
            steps,
            outputs,
            self.writer,
            self._providers,
            self._settings.delta_flush_ms / 1000,
            self._run_pb.tenant_id,
            self._settings.repos_root,
            Sandbox.from_settings(self._settings),
        )
        started = time.monotonic()
        try:
            result = await runner_for(step.kind)(context)
            if step.spec.generates:
                check_generatable(step, result.output, steps, await self._consistency_check())
        except (LeaseLost, PauseRequested, asyncio.CancelledError):
            raise
        except Exception as error:
            message = describe(error)
            self._failing = True
            await self.writer.step(
                step.id,
                runs_pb2.StepChange(status=ev.FAILED, error=message),
                draft(ev.STEP_FAILED, **ids, error=message),
                durable=True,
            )
            raise StepFailed(f"step {step.name!r} failed: {message}") from error
        provider = metrics.provider_of(result.served_by) if result.served_by else "none"
        metrics.STEP_SECONDS.labels(kind=step.kind, provider=provider).observe(
            time.monotonic() - started
        )
        await self._complete_step(step, result, durable=not last)
        return result

    async def _complete_step(self, step: pb.Step, result: StepResult, durable: bool) -> None:
        ids = {"step_id": step.id, "name": step.name}
        drafts = []
        if result.truncated:
            drafts.append(
                draft(
                    ev.STEP_TRUNCATED,
                    **ids,
                    used=result.cut_output_tokens,
                    limit=step.max_tokens,
                    reason=result.finish_reason,  # context_window: more tokens will not help
                    **({"items": cut} if (cut := result.extra.get("truncated_items")) else {}),
                    # why it was not continued further: the continuation failed
                    **(
                        {"continuation_error": e}
                        if (e := result.extra.get("continuation_error"))
                        else {}
                    ),
                )
            )
        drafts.append(
            draft(
                ev.STEP_COMPLETED,
                **ids,
                **_event_output(result),
                truncated=result.truncated,
                finish_reason=result.finish_reason,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                served_by=result.served_by,
                alternatives=len(result.alternatives),
                # The others are kept to choose from: one cut off must say so before it is.
                **({"truncated_alternatives": alts} if (alts := _cut(result.alternatives)) else {}),
                **result.extra,
            )
        )
        change = runs_pb2.StepChange(
            status=ev.COMPLETED,
            output=result.output,
            truncated=result.truncated,
            finish_reason=result.finish_reason,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            served_by=result.served_by,
            alternatives=[
                pb.Alternative(
                    index=i,
                    output=c.text,
                    finish_reason=c.finish_reason,
                    truncated=c.truncated,
                    input_tokens=c.input_tokens,
                    output_tokens=c.output_tokens,
                    served_by=c.served_by,
                )
                for i, c in enumerate(result.alternatives)
            ],
            item_count=result.item_count,
        )
        # A result costs a model call to redo: it is committed before the next step starts
        # (the last one's, with the run's end).
        await self.writer.step(step.id, change, *drafts, durable=durable)


def _event_output(result: StepResult) -> dict[str, Any]:
    """What step_completed carries of the step's output. A fan-out's is its items joined,
    each sent already (fan_out_progress, and the items route): sent again it would go to every
    follower and into the event table whole (megabytes for hundreds of items), in the same
    message as the step's. A long answer's is the step's own, and its deltas': a third copy in
    the same write took it past what a message holds; it is read from the step instead."""
    if "items" in result.extra:
        return {}
    if len(result.output) > EVENT_OUTPUT_CHARS:
        return {"output_left_out": True}
    return {"output": result.output}


def _cut(alternatives: Sequence[Completion]) -> list[int]:
    return [i for i, c in enumerate(alternatives) if c.truncated]
