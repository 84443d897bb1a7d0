"""Errors on the wire: `field: message` details, turned back into the same exception."""

from __future__ import annotations

import grpc
import pytest

from nyxflow.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NyxflowError,
    ResourceExhausted,
    StaleToken,
    Unauthenticated,
    Unavailable,
    error_from_status,
    from_rpc_error,
    status_details,
    to_details,
)


def on_the_wire(error: NyxflowError) -> grpc.aio.AioRpcError:
    """What a client receives when a servicer raises `error` (see ErrorInterceptor)."""
    trailing = grpc.aio.Metadata(*status_details(error))
    return grpc.aio.AioRpcError(
        error.code, grpc.aio.Metadata(), trailing, details=to_details(error)
    )


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    "field",
    ["name", "steps", "steps[0].kind", "steps[12].params", "events[1].data_json", "after_seq"],
)
def test_invalid_argument_keeps_its_field_across_the_wire(field: str) -> None:
    sent = InvalidArgument("must be a JSON object: got 'list'", field=field)
    assert to_details(sent) == f"{field}: must be a JSON object: got 'list'"

    received = from_rpc_error(on_the_wire(sent))

    assert type(received) is InvalidArgument
    assert (received.field, received.message) == (field, sent.message)
    assert to_details(received) == to_details(sent)


def test_a_message_with_a_colon_and_no_field_stays_whole() -> None:
    sent = InvalidArgument("is not valid JSON: Expecting value")
    received = from_rpc_error(on_the_wire(sent))
    assert received.field is None and received.message == sent.message


def test_without_a_field_details_are_the_message() -> None:
    assert to_details(NotFound("run r1 not found")) == "run r1 not found"
    assert to_details(InvalidArgument()) == "The request is invalid."


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (NotFound("run r1 not found"), NotFound),
        (AlreadyExists("taken"), AlreadyExists),
        (FailedPrecondition("has an active run"), FailedPrecondition),
        # A stale token is told apart: the engine stops writing instead of failing the run.
        (StaleToken("stale fencing token: run r1 is failed"), StaleToken),
        (Unauthenticated("invalid API key"), Unauthenticated),
        (Unavailable("try again"), Unavailable),
        (NyxflowError("boom"), NyxflowError),
    ],
)
def test_each_code_comes_back_as_its_exception(
    sent: NyxflowError, expected: type[NyxflowError]
) -> None:
    received = from_rpc_error(on_the_wire(sent))
    assert type(received) is expected
    assert received.message == sent.message and received.field is None


def test_only_invalid_argument_parses_a_field() -> None:
    received = from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "step: s1 not found"))
    assert type(received) is NotFound
    assert received.field is None and received.message == "step: s1 not found"


def test_deadline_exceeded_is_unavailable_and_empty_details_get_the_default() -> None:
    received = from_rpc_error(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, ""))
    assert type(received) is Unavailable
    assert received.message == "A service is unavailable; try again."


def test_unknown_codes_are_the_base_error() -> None:
    received = from_rpc_error(rpc_error(grpc.StatusCode.ABORTED, "aborted"))
    assert type(received) is NyxflowError and received.message == "aborted"
    assert received.code == grpc.StatusCode.INTERNAL


def test_a_message_too_large_is_resource_exhausted_not_internal() -> None:
    """gRPC's own refusal of a message over its limit: 413 with its words, not a 500."""
    said = "Sent message larger than max (39992090 vs. 33554432)"
    received = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, said))
    assert type(received) is ResourceExhausted and received.message == said
    assert received.http_status == 413


def test_a_status_carried_in_a_message_comes_back_as_its_exception() -> None:
    """RecordMany answers each batch with a code, message and field of its own."""
    stale = error_from_status(9, "stale fencing token: run r1 is failed")
    assert type(stale) is StaleToken
    refused = error_from_status(9, "has an active run")
    assert type(refused) is FailedPrecondition
    invalid = error_from_status(3, "unknown event type", "batches[2].ops[0].event.type")
    assert type(invalid) is InvalidArgument and invalid.field == "batches[2].ops[0].event.type"
    assert type(error_from_status(12345, "from the future")) is NyxflowError
