"""One exception tree for the whole suite, mapped to gRPC and HTTP status codes in one place."""

from __future__ import annotations

import logging

import grpc
from google.rpc import error_details_pb2, status_pb2

log = logging.getLogger(__name__)
# A library's own logger: with no handler configured (the CLI), a warning here is not printed
# by logging's last resort in the middle of the CLI's output.
log.addHandler(logging.NullHandler())


class NyxflowError(Exception):
    """Something went wrong in nyxflow."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.field = field
        super().__init__(self.message)


class InvalidArgument(NyxflowError):
    """The request is invalid."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(NyxflowError):
    """Not found."""

    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(NyxflowError):
    """It already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(NyxflowError):
    """The operation is not allowed in the current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class StaleToken(FailedPrecondition):
    """The fencing token is stale: the run was swept or claimed by someone else."""


class Unauthenticated(NyxflowError):
    """Missing or invalid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class ResourceExhausted(NyxflowError):
    """The request is too large (the gateway refuses what no gRPC message could carry)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class Unavailable(NyxflowError):
    """A service is unavailable; try again."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    # gRPC's own text when no service answered, which names addresses: for the logs and the
    # CLI's user (who set them), never for an answer to a caller.
    transport_text: str = ""


_BY_CODE: dict[grpc.StatusCode, type[NyxflowError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        ResourceExhausted,
    )
}
_BY_CODE[grpc.StatusCode.UNAVAILABLE] = Unavailable
_BY_CODE[grpc.StatusCode.DEADLINE_EXCEEDED] = Unavailable

FIELD_SEPARATOR = ": "
# A message on the wire, in characters. The status travels in trailing metadata, three copies
# of the message (percent-encoded, and twice in the binary status), which clients cap at 16 KB:
# a refusal quoting 30 KB of the request arrived as "Stream removed", naming no field.
MAX_WIRE_MESSAGE = 500


def _wire(message: str) -> str:
    return message if len(message) <= MAX_WIRE_MESSAGE else message[: MAX_WIRE_MESSAGE - 1] + "…"


def to_details(error: NyxflowError) -> str:
    """The status message on the wire: `field: message` when a field is named."""
    message = _wire(error.message)
    return f"{error.field}{FIELD_SEPARATOR}{message}" if error.field else message


STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_details(error: NyxflowError) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata with a google.rpc.Status, sent with every status a service makes: it
    tells the receiver the status is nyxflow's, not gRPC's own (see from_rpc_error). A named
    field travels as a BadRequest.FieldViolation, so any gRPC client (grpcurl included) can
    read which one."""
    status = status_pb2.Status(code=error.code.value[0], message=to_details(error))
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=_wire(error.message)
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a nyxflow service sent with `error`, or None (gRPC made it)."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def _field_violation(status: status_pb2.Status) -> tuple[str, str] | None:
    for detail in status.details:
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request) and request.field_violations:
            first = request.field_violations[0]
            return first.field, first.description
    return None


# A stale token travels as FAILED_PRECONDITION; this prefix tells the engine its lease is
# gone (stop, write nothing) rather than that one operation was refused.
STALE_TOKEN_PREFIX = "stale fencing token"
_STATUS_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}


def _class_for(code: grpc.StatusCode, message: str) -> type[NyxflowError]:
    cls = _BY_CODE.get(code, NyxflowError)
    if cls is FailedPrecondition and message.startswith(STALE_TOKEN_PREFIX):
        return StaleToken
    return cls


def error_from_status(code: int, message: str, field: str = "") -> NyxflowError:
    """The exception for a status carried inside a message (RecordMany's per-batch results)."""
    cls = _class_for(_STATUS_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN), message)
    return cls(message, field=field or None)


# Codes gRPC itself answers with when no service did (nothing listening, no answer in time).
_TRANSPORT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def from_rpc_error(error: grpc.aio.AioRpcError) -> NyxflowError:
    """Turn a status received from another service back into the matching exception."""
    cls = _class_for(error.code(), error.details() or "")
    status = _status(error)
    if status is None and error.code() in _TRANSPORT_CODES:
        # gRPC's own text names the address it tried ("ipv4:10.0.0.7:50051: Connection
        # refused"), and a gateway answers it to any caller, a valid key or not: the text
        # is for the logs, the caller gets the default message.
        log.warning(
            "no answer from a service",
            extra={"action": "rpc", "code": error.code().name, "error": error.details()},
        )
        unanswered = Unavailable()
        unanswered.transport_text = error.details() or ""
        return unanswered
    violation = _field_violation(status) if status is not None else None
    if violation is not None:
        return cls(violation[1], field=violation[0])
    return cls(error.details() or None)
