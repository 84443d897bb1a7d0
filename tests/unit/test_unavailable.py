"""A missing PostgreSQL or Redis fails the run on CI and skips, saying why, elsewhere."""

from __future__ import annotations

import pytest

from tests.support.databases import unavailable


def test_on_ci_a_missing_service_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="Redis is not reachable: refused"):
        unavailable("Redis", ConnectionRefusedError("refused"))


def test_elsewhere_it_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL is not reachable"):
        unavailable("PostgreSQL", OSError("no route"))
