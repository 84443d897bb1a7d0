"""Settings a service would start with and then not work with are refused at start, each
naming its variable (load_settings turns the refusal into the one line a service prints)."""

from __future__ import annotations

import pytest

from nyxflow.cli.connection import load_settings
from nyxflow.errors import InvalidArgument
from nyxflow.settings import CommonSettings
from nyxflow_engine.settings import EngineSettings
from nyxflow_gateway.settings import GatewaySettings
from nyxflow_runs.settings import RunsSettings


def refused(cls: type[CommonSettings], monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The variable the refusal names; its message must not quote the value."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidArgument) as refusal:
        load_settings(cls)
    for value in env.values():
        assert not value or value not in refusal.value.message
    assert refusal.value.field is not None
    return refusal.value.field


@pytest.mark.parametrize("cls", [RunsSettings, EngineSettings])
@pytest.mark.parametrize("secret", ["", "short-secret"])
def test_an_empty_or_short_internal_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch, cls: type[CommonSettings], secret: str
) -> None:
    """Runs took an empty secret and then an empty x-nyxflow-internal header as any tenant."""
    monkeypatch.setenv("NYXFLOW_RUNS_LISTEN", "127.0.0.1:50051")
    field = refused(cls, monkeypatch, NYXFLOW_INTERNAL_SECRET=secret)
    assert field == "NYXFLOW_INTERNAL_SECRET"


@pytest.mark.parametrize("cls", [RunsSettings, EngineSettings])
def test_the_development_and_generated_secrets_are_taken(
    monkeypatch: pytest.MonkeyPatch, cls: type[CommonSettings]
) -> None:
    monkeypatch.delenv("NYXFLOW_INTERNAL_SECRET", raising=False)
    monkeypatch.setenv("NYXFLOW_RUNS_LISTEN", "127.0.0.1:50051")
    assert load_settings(cls).internal_secret  # the development one, on loopback
    monkeypatch.setenv("NYXFLOW_INTERNAL_SECRET", "x" * 16)
    assert load_settings(cls).internal_secret == "x" * 16


def test_the_gateway_which_holds_no_secret_ignores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NYXFLOW_INTERNAL_SECRET", "")
    load_settings(GatewaySettings)
