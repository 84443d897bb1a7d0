"""Server plumbing every gRPC service shares: errors → status codes, health, reflection, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nyxflow.cli.child import POLL_S, answers
from nyxflow.errors import (
    InvalidArgument,
    NyxflowError,
    Unavailable,
    status_details,
    to_details,
)
from nyxflow.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Long streams (WatchRun, Execute) stay open for minutes: keep the connections alive.
CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    # gRPC's default backoff grows to 120 s: after runs restarted, the engine and the gateway
    # took up to two minutes to reconnect. A few seconds at most, from half a second. (Not
    # grpc.min_reconnect_backoff_ms: it is also how long a connection attempt may take, 20 s,
    # and at 500 ms a loaded or frozen peer failed calls that its deadline would have waited.)
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)
SERVER_OPTIONS: Sequence[tuple[str, Any]] = (
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # grpc's default SO_REUSEPORT let a second service bind a port in use: the kernel split
    # the connections between the two
    ("grpc.so_reuseport", 0),
)


Translate = Callable[[Exception], NyxflowError | None]
# Whether the service's dependency (its database, runs) answers now.
Check = Callable[[], Awaitable[bool]]
# How often a serving service asks its check, and how long an answer may take: a hung
# dependency must read as down.
HEALTH_INTERVAL_S = 2.0
HEALTH_CHECK_TIMEOUT_S = 1.5


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The one place an error becomes a gRPC status: a NyxflowError (or what `translate` turns
    into one, e.g. a lost database connection into UNAVAILABLE) by its code; anything else is
    INTERNAL, logged, with no detail leaked."""

    def __init__(self, translate: Translate | None = None) -> None:
        self._translate = translate
        # gRPC asks for the handler on every call; the wrapped one per method is built once.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def _abort(
        self, error: Exception, context: grpc.aio.ServicerContext, method: str
    ) -> None:
        known = error if isinstance(error, NyxflowError) else None
        if known is None and self._translate is not None:
            known = self._translate(error)
        if known is not None:
            await context.abort(known.code, to_details(known), status_details(known))
        log.error("unhandled error", exc_info=error, extra={"action": "rpc", "method": method})
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrap(await continuation(handler_call_details), method)
            if wrapped is not None:
                self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler | None, method: str) -> grpc.RpcMethodHandler:
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await unary(request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as error:
                    await self._abort(error, context, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    async for response in stream(request, context):
                        yield response
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as error:
                    await self._abort(error, context, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class GrpcService:
    """A grpc.aio server with health and reflection, drained on SIGTERM/SIGINT."""

    def __init__(
        self,
        service_names: Sequence[str],
        bind: str,
        stop: asyncio.Event | None = None,
        translate: Translate | None = None,
        setting: str = "listen",
    ) -> None:
        self.server = grpc.aio.server(
            interceptors=[ErrorInterceptor(translate)], options=SERVER_OPTIONS
        )
        self.health = health.aio.HealthServicer()
        self.service_names = list(service_names)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = self._listen(bind, setting)
        # An embedding caller (a test) passes its own stop event; a process stops on signals.
        self._signals = stop is None
        self._stop = stop or asyncio.Event()

    def _listen(self, bind: str, setting: str) -> int:
        """The port bound, or a refusal naming the setting (grpc raises a bare RuntimeError)."""
        _refuse_a_port_grpc_would_misuse(bind, setting)
        try:
            port = int(self.server.add_insecure_port(bind))
        except RuntimeError:
            port = 0
        if not port:
            raise InvalidArgument(
                f"cannot listen on {bind}: the port is in use, or the host is not this machine's",
                field=setting,
            )
        return port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def _prepared(self, prepare: Callable[[], Awaitable[None]]) -> bool:
        """False when asked to stop first; a failed preparation raises (the process exits)."""
        work = asyncio.ensure_future(prepare())
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not work.done():
            await cancel_and_wait(work)
            return False
        try:
            work.result()
        except BaseException:
            await self.server.stop(0)
            raise
        return True

    def request_stop(self) -> None:
        self._stop.set()

    async def _follow(self, check: Check, interval_s: float) -> None:
        """Health after start-up: SERVING while `check` answers yes, NOT_SERVING while it
        answers no, fails or hangs; one log line per change, not per poll."""
        serving = True
        while True:
            await asyncio.sleep(interval_s)
            ok, reason = await checked(check, HEALTH_CHECK_TIMEOUT_S)
            if ok == serving:
                continue
            serving = ok
            await self.set_serving(ok)
            if ok:
                log.info("a dependency answers again: SERVING", extra={"action": "health"})
            else:
                log.warning(
                    "a dependency does not answer: NOT_SERVING",
                    extra={"action": "health", "error": reason},
                )

    async def run(
        self,
        *,
        prepare: Callable[[], Awaitable[None]] | None = None,
        on_drain: Callable[[], Awaitable[None]] | None = None,
        grace_s: float = 5.0,
        ready: asyncio.Event | None = None,
        check: Check | None = None,
        health_interval_s: float = HEALTH_INTERVAL_S,
    ) -> None:
        """Listen at once but answer NOT_SERVING until `prepare` (dependencies, schema) is done;
        then follow `check` every `health_interval_s`; serve until SIGTERM/SIGINT or
        `request_stop`, then drain: NOT_SERVING first."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT) if self._signals else ():
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, self._stop.set)
        await self.server.start()
        await self.set_serving(False)
        if prepare is not None and not await self._prepared(prepare):
            await self.server.stop(0)
            return
        await self.set_serving(True)
        following = (
            asyncio.create_task(self._follow(check, health_interval_s), name="health")
            if check is not None
            else None
        )
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:  # ended before the drain: it must not turn a draining service SERVING
            if following is not None:
                await cancel_and_wait(following)
        # The grace is for the whole shutdown (what a supervisor waits before SIGKILL): the
        # drain's and the calls' waits share it.
        stop_by = loop.time() + grace_s
        await self.set_serving(False)
        if on_drain is not None:
            await on_drain()
        await self.server.stop(max(0.0, stop_by - loop.time()))


def stop_after(stop: asyncio.Event, address: str, within_s: float) -> None:
    """On SIGTERM/SIGINT, set `stop` only once nothing answers at `address` any more, or
    `within_s` have passed. systemd signals every process of a unit at once: runs that drained
    with the engine refused the pauses the engine was still writing through it."""
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Task[None]] = []  # held: a task only the loop refers to may be lost

    def on_signal() -> None:
        if not waiting:  # a second signal changes nothing: the wait is bounded already
            waiting.append(
                loop.create_task(_set_once_gone(stop, address, within_s), name="stop-after")
            )

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, on_signal)


async def _set_once_gone(stop: asyncio.Event, address: str, within_s: float) -> None:
    log.info(
        "stopping once %s no longer answers",
        address,
        extra={"action": "stop", "within_s": within_s},
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        if not await asyncio.to_thread(answers, address):
            break
        await asyncio.sleep(POLL_S)
    stop.set()


def _refuse_a_port_grpc_would_misuse(bind: str, setting: str) -> None:
    """grpc wraps a port beyond 0..65535 round (127.0.0.1:99999 served on 34463), and binds
    what it can of a name's addresses: localhost:P with 127.0.0.1:P held served on ::1 alone,
    and IPv4 clients reached the other program."""
    if bind.startswith("unix"):  # unix:path, unix-abstract:name
        return
    host, _, port = bind.rpartition(":")
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise InvalidArgument(
            f"cannot listen on {bind}: expected host:port, a port from 0 to 65535", field=setting
        )
    from nyxflow.cli.supervisor import in_use  # here: the CLI's modules import this one

    if in_use(host.strip("[]"), int(port)):
        raise InvalidArgument(f"cannot listen on {bind}: the port is in use", field=setting)


async def checked(check: Check, timeout_s: float) -> tuple[bool, str]:
    """The check's answer, and why it is no: one that fails or hangs is a no."""
    try:
        async with asyncio.timeout(timeout_s):
            return await check(), ""
    except TimeoutError:
        return False, f"no answer within {timeout_s:g} s"
    except Exception as error:
        return False, f"{type(error).__name__}: {error}"


async def is_serving(channel: grpc.aio.Channel, timeout_s: float = 1.0) -> bool:
    """Whether the service behind `channel` answers SERVING to one health Check."""
    try:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout_s
        )
    except grpc.aio.AioRpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


async def wait_serving(
    channel: grpc.aio.Channel,
    timeout_s: float,
    name: str = "a dependency",
    setting: str | None = None,
) -> None:
    """Until the service behind `channel` reports SERVING (a dependency at start-up); else
    Unavailable naming it (e.g. "runs at 10.0.0.7:50051") and the setting that points there."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await is_serving(channel):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise Unavailable(
                f"{name} did not become SERVING within {timeout_s:g} s", field=setting
            )
        await asyncio.sleep(0.2)
