"""The options every gRPC channel between the services is opened with."""

from __future__ import annotations

from nyxflow.grpc_server import CHANNEL_OPTIONS


def test_a_restarted_service_is_reached_again_within_seconds() -> None:
    """gRPC's default reconnect backoff grows to 120 s: after runs restarted, the engine and
    the gateway went on failing for up to two minutes with runs back up."""
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.max_reconnect_backoff_ms"] <= 5_000
    assert options["grpc.initial_reconnect_backoff_ms"] <= options["grpc.max_reconnect_backoff_ms"]


def test_a_connection_attempt_may_take_as_long_as_grpc_allows() -> None:
    """grpc.min_reconnect_backoff_ms is also the time a connection attempt may take (20 s):
    at 500 ms, `run start` on a loaded machine or a frozen engine failed UNAVAILABLE at once
    ("timed out before receiving SETTINGS frame") instead of saying the run is still pending."""
    assert "grpc.min_reconnect_backoff_ms" not in dict(CHANNEL_OPTIONS)
