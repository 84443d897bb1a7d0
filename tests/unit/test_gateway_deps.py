"""The gateway keeps the clients of the keys it has seen, bounded, and never mixes keys."""

from __future__ import annotations

import grpc
import pytest

from nyxflow.auth import bearer_metadata
from nyxflow_gateway import deps
from nyxflow_gateway.deps import ServicesByKey


async def test_one_key_one_set_of_clients_and_keys_never_mixed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deps, "KEPT_KEYS", 2)
    async with (
        grpc.aio.insecure_channel("127.0.0.1:9") as runs,
        grpc.aio.insecure_channel("127.0.0.1:9") as engine,
    ):
        by_key = ServicesByKey(runs, engine, 5.0)
        a, b = by_key("key-a"), by_key("key-b")

        assert by_key("key-a") is a  # kept, and now the most recent
        assert a.runs._md == bearer_metadata("key-a") and a.engine._md == bearer_metadata("key-a")
        assert b.runs._md == bearer_metadata("key-b")
        by_key("key-c")  # over the bound: the least recent (b) goes
        assert by_key("key-a") is a
        rebuilt = by_key("key-b")
        assert rebuilt is not b and rebuilt.runs._md == bearer_metadata("key-b")
