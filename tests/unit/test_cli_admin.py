"""`nyxflow admin key`: an expiry that is no number of days is refused before any call, and a
key's state says whether its expiry has passed."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from nyxflow.cli.admin import _state
from nyxflow.cli.main import app


@pytest.mark.parametrize("days", ["-5", "nan", "-inf"])
def test_an_expiry_that_is_no_number_of_days_is_refused(
    days: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It made a key that never expires, without a word."""
    monkeypatch.setenv("NYXFLOW_RUNS_ADDR", "127.0.0.1:1")  # nothing listening: no call made
    monkeypatch.setenv("NYXFLOW_ADMIN_KEY", "admin")
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(
        app, ["admin", "key", "create", "acme", "--name", "ci", "--expires-in-days", days]
    )
    assert result.exit_code == 2, result.output
    assert "--expires-in-days" in result.output and "0 or more" in result.output


def test_a_key_s_state_tells_expired_from_expiring() -> None:
    now = 1_800_000_000.0
    assert _state(0.0, 0.0, now) == "active"
    assert _state(now - 1, now + 60, now) == "revoked"
    assert _state(0.0, now + 86_400, now) == "expires 2027-01-16 08:00 UTC"
    assert _state(0.0, now - 60, now) == "expired 2027-01-15 07:59 UTC"
