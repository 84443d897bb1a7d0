"""Settings a service would start with and then not work with are refused at start, each
naming its variable (load_settings turns the refusal into the one line a service prints)."""

from __future__ import annotations

import pytest

from nyxflow.cli.connection import CliSettings, load_settings, one_line
from nyxflow.errors import InvalidArgument
from nyxflow.settings import CommonSettings
from nyxflow_engine.settings import EngineSettings
from nyxflow_gateway.__main__ import listening_sockets
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
        (RunsSettings, "NYXFLOW_REDIS_TIMEOUT_S"),  # every publish failed at once
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
        (RunsSettings, "NYXFLOW_DATABASE_TIMEOUT_S"),  # 0: no query timeout
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
    "url",
    [
        "http://:pw@127.0.0.1:6379/0",
        "127.0.0.1:6379",
        "valkey://127.0.0.1/0",
        "redis://:pw@127.0.0.1:99999/0",  # a port redis-py cannot take
        "redis://:pw@127.0.0.1:abc/0",
        # a password holding an unencoded "/": redis-py read "pwAb3" as the port and said so
        "redis://:pwAb3/xyz+Q@redis:6379/0",
    ],
)
def test_a_redis_url_redis_cannot_take_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """redis-py's ValueError was a traceback at start; its words quote what it could not
    read, which may be a password."""
    line = refusal(RunsSettings, monkeypatch, NYXFLOW_REDIS_URL=url)
    assert line.startswith("NYXFLOW_REDIS_URL: ") and "pw" not in line


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@cache.example/1", "unix:///run/r.sock", ""]
)
def test_a_redis_url_redis_takes_is_taken(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("NYXFLOW_REDIS_URL", url)
    assert load_settings(RunsSettings).redis_url == url


@pytest.mark.parametrize("cls", [RunsSettings, EngineSettings, GatewaySettings, CliSettings])
@pytest.mark.parametrize("value", ["inf", "nan", "1e10"])
def test_an_rpc_timeout_beyond_a_day_is_refused(
    monkeypatch: pytest.MonkeyPatch, cls: type[CommonSettings], value: str
) -> None:
    """inf and 1e10 were taken, and then every internal call failed at once with
    DEADLINE_EXCEEDED."""
    assert refusal(cls, monkeypatch, NYXFLOW_RPC_TIMEOUT_S=value).startswith(
        "NYXFLOW_RPC_TIMEOUT_S: "
    )
    monkeypatch.setenv("NYXFLOW_RPC_TIMEOUT_S", "86400")
    assert load_settings(cls).rpc_timeout_s == 86400


@pytest.mark.parametrize(
    ("cls", "setting"),
    [
        (RunsSettings, "NYXFLOW_SWEEP_INTERVAL_S"),  # inf: never swept
        (RunsSettings, "NYXFLOW_DATABASE_WAIT_S"),
        (RunsSettings, "NYXFLOW_DATABASE_TIMEOUT_S"),  # inf: a frozen database waited for
        (RunsSettings, "NYXFLOW_REDIS_TIMEOUT_S"),
        (EngineSettings, "NYXFLOW_ADOPT_INTERVAL_S"),
        (EngineSettings, "NYXFLOW_SHUTDOWN_GRACE_S"),
        (GatewaySettings, "NYXFLOW_SSE_HEARTBEAT_S"),
    ],
)
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_inf_or_nan_is_refused(
    monkeypatch: pytest.MonkeyPatch, cls: type[CommonSettings], setting: str, value: str
) -> None:
    assert refusal(cls, monkeypatch, **{setting: value}).startswith(f"{setting}: ")


@pytest.mark.parametrize("value", ["1e12", "inf", "100000"])
def test_a_peer_timeout_the_keepalive_cannot_take_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """1e12 and inf were tracebacks at start; 100000 (TCP_KEEPIDLE stops at 32767 s) was a
    refusal blaming NYXFLOW_GATEWAY_PORT."""
    line = refusal(GatewaySettings, monkeypatch, NYXFLOW_PEER_TIMEOUT_S=value)
    assert line.startswith("NYXFLOW_PEER_TIMEOUT_S: ")


def test_the_longest_peer_timeout_is_one_the_keepalive_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NYXFLOW_PEER_TIMEOUT_S", "86400")
    settings = load_settings(GatewaySettings)
    for sock in listening_sockets("127.0.0.1", 0, settings.peer_timeout_s):
        sock.close()


@pytest.mark.parametrize("engine_id", ["", "e" * 201])
def test_an_engine_id_runs_cannot_take_as_a_lease_owner_is_refused(
    monkeypatch: pytest.MonkeyPatch, engine_id: str
) -> None:
    """Taken, and then every claim failed: runs takes an owner of 1 to 200 characters."""
    line = refusal(EngineSettings, monkeypatch, NYXFLOW_ENGINE_ID=engine_id)
    assert line.startswith("NYXFLOW_ENGINE_ID: ")
    monkeypatch.setenv("NYXFLOW_ENGINE_ID", "e" * 200)
    assert load_settings(EngineSettings).engine_id == "e" * 200


@pytest.mark.parametrize("value", ["0", "-1"])
def test_an_sse_queue_of_no_events_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Taken, and then every browser was dropped at its first live event, again and again."""
    line = refusal(GatewaySettings, monkeypatch, NYXFLOW_SSE_QUEUE_EVENTS=value)
    assert line.startswith("NYXFLOW_SSE_QUEUE_EVENTS: ")


@pytest.mark.parametrize("key", ["", "dev-key\n", "my key", "clé-secrète", "k" * 513])
def test_an_api_key_no_client_can_send_is_refused(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """Runs took it and rotated to it: the default tenant's working key was revoked for one
    no client can present."""
    line = refusal(RunsSettings, monkeypatch, NYXFLOW_API_KEY=key)
    assert line.startswith("NYXFLOW_API_KEY: ")
    assert not key.strip() or key.strip() not in line  # a key is never quoted
