"""One claimed run, executing in a task the engine owns: steps in order, lease renewed by
heartbeat, and every way out (success, step error, bug, cancel, shutdown, lost lease) written
to the database before anything else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from nyxflow import events as ev
from nyxflow.errors import NyxflowError
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2
from nyxflow_engine.providers.registry import Providers
from nyxflow_engine.settings import EngineSettings
from nyxflow_engine.steps.context import DeltaBuffer, StepContext
from nyxflow_engine.steps.registry import runner_for
from nyxflow_engine.writer import LeaseLost, RunWriter, draft

log = logging.getLogger(__name__)

SHUTDOWN_ERROR = "engine shut down"
CANCELLED_ERROR = "execution cancelled"


class StepFailed(Exception):
    """A step failed; it is already marked failed in the database."""


def describe(error: BaseException) -> str:
    if isinstance(error, NyxflowError):
        return f"{error.field}: {error.message}" if error.field else error.message
    return f"{type(error).__name__}: {error}"


class Execution:
    def __init__(
        self,
        writer: RunWriter,
        steps: Sequence[pb.Step],
        settings: EngineSettings,
        providers: Providers,
    ) -> None:
        self.writer = writer
        self.run_id = writer.run_id
        self._steps = list(steps)
        self._settings = settings
        self._providers = providers
        self._pausing = False
        self._lease_lost = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._run(), name=f"run-{self.run_id}")
        return self.task

    def pause(self) -> None:
        """Graceful shutdown: stop and leave the run paused, to be resumed."""
        self._pausing = True
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        extra = {"run_id": self.run_id}
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"heartbeat-{self.run_id}")
        try:
            await self._execute_steps()
            await self.writer.finish(ev.COMPLETED)
            log.info("run completed", extra=extra)
        except LeaseLost as error:
            log.warning(
                "lease lost, stopping without writing", extra={**extra, "error": str(error)}
            )
        except asyncio.CancelledError:
            if not self._lease_lost:
                status, message = (
                    (ev.PAUSED, SHUTDOWN_ERROR) if self._pausing else (ev.FAILED, CANCELLED_ERROR)
                )
                await self._finish_quietly(status, message)
            raise
        except StepFailed as error:
            await self._finish_quietly(ev.FAILED, str(error))
        except Exception as error:
            log.exception("run crashed", extra=extra)
            await self._finish_quietly(ev.FAILED, describe(error))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.writer.feed.close()

    async def _finish_quietly(self, status: str, error: str) -> None:
        """Best effort: if even this write fails, the sweeper fails the run after its lease."""
        try:
            await self.writer.finish(status, error)
        except LeaseLost:
            pass
        except Exception:
            log.exception("could not record the run's end", extra={"run_id": self.run_id})

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            try:
                await self.writer.heartbeat(self._settings.lease_ttl_s)
            except LeaseLost:
                # Swept or reclaimed while we were away: a zombie must stop, writing nothing.
                self._lease_lost = True
                if self.task is not None:
                    self.task.cancel()
                return
            except Exception as error:
                log.warning("heartbeat failed", extra={"run_id": self.run_id, "error": str(error)})

    async def _execute_steps(self) -> None:
        # Resume semantics: every step not completed runs, in order, whatever follows it.
        outputs = {s.name: s.output for s in self._steps if s.status == ev.COMPLETED}
        for step in self._steps:
            if step.status == ev.COMPLETED:
                continue
            outputs[step.name] = await self._execute_step(step, outputs)

    async def _execute_step(self, step: pb.Step, outputs: dict[str, str]) -> str:
        ids = {"step_id": step.id, "name": step.name}
        await self.writer.step(
            step.id,
            runs_pb2.StepChange(status=ev.RUNNING),
            draft(ev.STEP_STARTED, **ids, kind=step.kind, order=step.order),
        )
        deltas = DeltaBuffer(self.writer, step.id, self._settings.delta_flush_ms / 1000)
        context = StepContext(step, outputs, self.writer, self._providers, deltas)
        try:
            completion = await runner_for(step.kind)(context)
        except (LeaseLost, asyncio.CancelledError):
            raise
        except Exception as error:
            message = describe(error)
            await self.writer.step(
                step.id,
                runs_pb2.StepChange(status=ev.FAILED, error=message),
                draft(ev.STEP_FAILED, **ids, error=message),
            )
            raise StepFailed(f"step {step.name!r} failed: {message}") from error
        drafts = []
        if completion.truncated:
            drafts.append(
                draft(
                    ev.STEP_TRUNCATED,
                    **ids,
                    max_tokens=step.max_tokens,
                    output_tokens=completion.output_tokens,
                )
            )
        drafts.append(
            draft(
                ev.STEP_COMPLETED,
                **ids,
                output=completion.text,
                truncated=completion.truncated,
                finish_reason=completion.finish_reason,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                served_by=completion.served_by,
            )
        )
        await self.writer.step(
            step.id,
            runs_pb2.StepChange(
                status=ev.COMPLETED,
                output=completion.text,
                truncated=completion.truncated,
                finish_reason=completion.finish_reason,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                served_by=completion.served_by,
            ),
            *drafts,
        )
        return completion.text
