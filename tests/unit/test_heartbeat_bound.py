"""How long one heartbeat may take before the engine gives it up and sends the next."""

from __future__ import annotations

import pytest

from nyxflow_engine.execution import heartbeat_bound_s
from nyxflow_engine.settings import EngineSettings


@pytest.mark.parametrize(
    ("ttl_s", "heartbeat_s", "rpc_timeout_s", "bound_s"),
    [
        (30.0, 10.0, 10.0, 10.0),  # the defaults: half of the 20 s left
        (2.0, 0.5, 10.0, 0.75),  # the fault suite's: a second try lands before 2 s
        (60.0, 10.0, 10.0, 10.0),  # never longer than the RPC timeout
        (1.2, 1.0, 10.0, 1.0),  # never shorter than the interval
    ],
)
def test_a_second_attempt_still_lands_within_the_lease(
    ttl_s: float, heartbeat_s: float, rpc_timeout_s: float, bound_s: float
) -> None:
    settings = EngineSettings(
        lease_ttl_s=ttl_s, heartbeat_s=heartbeat_s, rpc_timeout_s=rpc_timeout_s
    )
    assert heartbeat_bound_s(settings) == pytest.approx(bound_s)
