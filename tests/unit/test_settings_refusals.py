"""Settings a service would start with and then not work with are refused at start, each
naming its variable (load_settings turns the refusal into the one line a service prints)."""

from __future__ import annotations

import pytest

from nyxflow.cli.connection import load_settings, one_line
from nyxflow.errors import InvalidArgument
from nyxflow.settings import CommonSettings
from nyxflow_engine.settings import EngineSettings
from nyxflow_gateway.settings import GatewaySettings
from nyxflow_runs.settings import RunsSettings


def refusal(cls: type[CommonSettings], monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The one line the service prints: `<variable>: <why>`."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidArgument) as refused:
        load_settings(cls)
    return one_line(refused.value)


@pytest.mark.parametrize("cls", [RunsSettings, EngineSettings])
@pytest.mark.parametrize("secret", ["", "short-secret"])
def test_an_empty_or_short_internal_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch, cls: type[CommonSettings], secret: str
) -> None:
    """Runs took an empty secret and then an empty x-nyxflow-internal header as any tenant."""
    monkeypatch.setenv("NYXFLOW_RUNS_LISTEN", "127.0.0.1:50051")
    line = refusal(cls, monkeypatch, NYXFLOW_INTERNAL_SECRET=secret)
    assert line.startswith("NYXFLOW_INTERNAL_SECRET: ")
    assert not secret or secret not in line


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


@pytest.mark.parametrize("heartbeat", ["2", "3", "0", "-1"])
def test_a_heartbeat_not_within_the_lease_is_refused(
    monkeypatch: pytest.MonkeyPatch, heartbeat: str
) -> None:
    """A heartbeat of 3 s with a lease of 2 s: every run longer than the lease was swept as an
    orphan while its engine was alive and well."""
    monkeypatch.setenv("NYXFLOW_LEASE_TTL_S", "2")
    line = refusal(EngineSettings, monkeypatch, NYXFLOW_HEARTBEAT_S=heartbeat)
    assert line.startswith("NYXFLOW_HEARTBEAT_S: ")


def test_a_heartbeat_within_the_lease_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NYXFLOW_LEASE_TTL_S", "2")  # the process tests' fast settings
    monkeypatch.setenv("NYXFLOW_HEARTBEAT_S", "0.5")
    assert load_settings(EngineSettings).heartbeat_s == 0.5


@pytest.mark.parametrize(
    ("cls", "setting"),
    [
        (RunsSettings, "NYXFLOW_SWEEP_INTERVAL_S"),  # swept without a pause: a core pinned
        (RunsSettings, "NYXFLOW_WATCH_POLL_S"),
        (RunsSettings, "NYXFLOW_RPC_TIMEOUT_S"),
        (EngineSettings, "NYXFLOW_ADOPT_INTERVAL_S"),
        (EngineSettings, "NYXFLOW_GROUP_COMMIT_MS"),
        (EngineSettings, "NYXFLOW_WRITE_RETRY_S"),
        (EngineSettings, "NYXFLOW_PROVIDER_BUDGET_S"),
        (GatewaySettings, "NYXFLOW_RPC_TIMEOUT_S"),  # every request failed at once
        (GatewaySettings, "NYXFLOW_SSE_HEARTBEAT_S"),
    ],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_an_interval_or_timeout_not_above_zero_is_refused(
    monkeypatch: pytest.MonkeyPatch, cls: type[CommonSettings], setting: str, value: str
) -> None:
    assert refusal(cls, monkeypatch, **{setting: value}).startswith(f"{setting}: ")


@pytest.mark.parametrize(
    ("cls", "setting"),
    [
        (RunsSettings, "NYXFLOW_DATABASE_WAIT_S"),
        (EngineSettings, "NYXFLOW_RUNS_WAIT_S"),
        (EngineSettings, "NYXFLOW_SHUTDOWN_GRACE_S"),
        (EngineSettings, "NYXFLOW_DELTA_FLUSH_MS"),
        (EngineSettings, "NYXFLOW_PROVIDER_BACKOFF_S"),
        (GatewaySettings, "NYXFLOW_SSE_RETRY_MS"),
    ],
)
def test_a_wait_grace_or_backoff_may_be_zero_not_negative(
    monkeypatch: pytest.MonkeyPatch, cls: type[CommonSettings], setting: str
) -> None:
    monkeypatch.setenv(setting, "0")
    load_settings(cls)  # no wait, no grace: one attempt, a stop at once
    assert refusal(cls, monkeypatch, **{setting: "-1"}).startswith(f"{setting}: ")


@pytest.mark.parametrize("cls", [RunsSettings, EngineSettings, GatewaySettings])
def test_a_log_level_is_a_level_logging_knows_in_any_case(
    monkeypatch: pytest.MonkeyPatch, cls: type[CommonSettings]
) -> None:
    """`verbose` was taken, and logging's ValueError was a traceback at start."""
    assert refusal(cls, monkeypatch, NYXFLOW_LOG_LEVEL="verbose").startswith("NYXFLOW_LOG_LEVEL: ")
    monkeypatch.setenv("NYXFLOW_LOG_LEVEL", "debug")
    assert load_settings(cls).log_level == "DEBUG"


@pytest.mark.parametrize(
    "url", ["http://:pw@127.0.0.1:6379/0", "127.0.0.1:6379", "valkey://127.0.0.1/0"]
)
def test_a_redis_url_of_another_scheme_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """redis-py's ValueError was a traceback at start."""
    line = refusal(RunsSettings, monkeypatch, NYXFLOW_REDIS_URL=url)
    assert line.startswith("NYXFLOW_REDIS_URL: ") and "pw" not in line


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@cache.example/1", "unix:///run/r.sock", ""]
)
def test_a_redis_url_redis_takes_is_taken(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("NYXFLOW_REDIS_URL", url)
    assert load_settings(RunsSettings).redis_url == url
