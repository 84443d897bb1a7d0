"""One exception tree for the whole suite, mapped to gRPC and HTTP status codes in one place."""

from __future__ import annotations

import grpc


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


class Unavailable(NyxflowError):
    """A service is unavailable; try again."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


_BY_CODE: dict[grpc.StatusCode, type[NyxflowError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Unauthenticated)
}
_BY_CODE[grpc.StatusCode.UNAVAILABLE] = Unavailable
_BY_CODE[grpc.StatusCode.DEADLINE_EXCEEDED] = Unavailable

FIELD_SEPARATOR = ": "


def to_details(error: NyxflowError) -> str:
    """The status message on the wire: `field: message` when a field is named."""
    return f"{error.field}{FIELD_SEPARATOR}{error.message}" if error.field else error.message


def from_rpc_error(error: grpc.aio.AioRpcError) -> NyxflowError:
    """Turn a status received from another service back into the matching exception."""
    cls = _BY_CODE.get(error.code(), NyxflowError)
    details = error.details() or ""
    field = None
    if cls is InvalidArgument and FIELD_SEPARATOR in details:
        head, _, rest = details.partition(FIELD_SEPARATOR)
        if head and " " not in head:
            field, details = head, rest
    return cls(details or None, field=field)
