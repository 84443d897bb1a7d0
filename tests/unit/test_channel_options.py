"""The options every gRPC channel between the services is opened with."""

from __future__ import annotations

from nyxflow.grpc_server import CHANNEL_OPTIONS


def test_a_restarted_service_is_reached_again_within_seconds() -> None:
    """gRPC's default reconnect backoff grows to 120 s: after runs restarted, the engine and
    the gateway went on failing for up to two minutes with runs back up."""
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.max_reconnect_backoff_ms"] <= 5_000
    assert options["grpc.initial_reconnect_backoff_ms"] <= options["grpc.max_reconnect_backoff_ms"]
