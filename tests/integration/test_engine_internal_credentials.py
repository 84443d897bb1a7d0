"""The engine's port is no door to runs' internal credentials: it refuses the well-known
development secret beyond loopback, as runs does, and Execute takes a tenant's API key only,
so a caller with the internal secret and a tenant id claims and reads no one's run."""

from __future__ import annotations

import pytest

from nyxflow import events as ev
from nyxflow.auth import internal_metadata
from nyxflow.cli.connection import load_settings
from nyxflow.client import EngineClient, open_channel
from nyxflow.errors import InvalidArgument, Unauthenticated, Unavailable
from nyxflow.settings import DEV_INTERNAL_SECRET
from nyxflow_engine.settings import EngineSettings
from tests.support.inprocess import clients, engine_service, runs_service
from tests.support.ports import free_port
from tests.support.workflows import chain


@pytest.mark.parametrize(
    ("listen", "refused"),
    [
        *((a, True) for a in ("0.0.0.0:50052", "[::]:50052", ":50052", "10.0.0.5:50052")),
        *((a, False) for a in ("127.0.0.1:50052", "localhost:50052", "[::1]:50052")),
    ],
)
def test_the_development_secret_is_the_engines_on_loopback_only(
    monkeypatch: pytest.MonkeyPatch, listen: str, refused: bool
) -> None:
    monkeypatch.delenv("NYXFLOW_INTERNAL_SECRET", raising=False)
    monkeypatch.setenv("NYXFLOW_ENGINE_LISTEN", listen)
    if not refused:
        assert load_settings(EngineSettings).engine_listen == listen
        return
    with pytest.raises(InvalidArgument) as refusal:
        load_settings(EngineSettings)
    assert refusal.value.field == "NYXFLOW_ENGINE_LISTEN"
    assert "NYXFLOW_INTERNAL_SECRET" in refusal.value.message
    monkeypatch.setenv("NYXFLOW_INTERNAL_SECRET", "a-secret-of-our-own")  # its own: taken
    assert load_settings(EngineSettings).engine_listen == listen


@pytest.mark.parametrize("secret", [DEV_INTERNAL_SECRET, "wrong-secret-of-16+"])
async def test_execute_with_internal_credentials_is_refused_and_claims_nothing(
    database_url: str, secret: str
) -> None:
    """The development secret on loopback (both services take it there): anyone on the host,
    with it and a tenant's id, ran and read that tenant's run through the engine."""
    async with (
        runs_service(database_url, internal_secret=DEV_INTERNAL_SECRET) as rs,
        engine_service(rs.runs_listen, internal_secret=DEV_INTERNAL_SECRET) as es,
        clients(rs.runs_listen, es.engine_listen) as owner,
    ):
        assert owner.engine is not None
        workflow = await owner.runs.create_workflow("victim", chain(1))
        run = await owner.runs.create_run(workflow.id)
        tenant_id = (await owner.runs.get_run(run.id)).tenant_id
        async with open_channel(es.engine_listen) as channel:
            anonymous = EngineClient(channel, internal_metadata(secret, tenant_id))
            with pytest.raises(Unauthenticated) as refused:
                async for event in anonymous.execute(run.id):
                    raise AssertionError(f"a caller with no key read the run: {event.type}")
        assert "API key" in refused.value.message
        assert (await owner.runs.get_run(run.id)).status == ev.PENDING  # not claimed

        # The owner's key still runs it.
        events = [e.type async for e in owner.engine.execute(run.id)]
        assert events[-1] == ev.RUN_COMPLETED


async def test_an_engine_whose_secret_runs_refuses_does_not_start(database_url: str) -> None:
    """Runs' health asks no credentials: the engine said SERVING, took work it could not
    write (the adopter logging "this call needs the internal credentials" every second), and
    its runs were failed 30 s later as orphans."""
    async with runs_service(database_url) as rs:
        with pytest.raises(InvalidArgument) as refused:
            async with engine_service(rs.runs_listen, internal_secret="another-secret-of-ours"):
                pass
    assert refused.value.field == "NYXFLOW_INTERNAL_SECRET"
    assert "another-secret-of-ours" not in refused.value.message


async def test_an_engine_that_cannot_reach_runs_names_where_it_looked() -> None:
    """It said "a dependency did not become SERVING within 1 s", naming neither."""
    runs_addr = f"127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable) as refused:
        async with engine_service(runs_addr, runs_wait_s=0.5):
            pass
    assert refused.value.field == "NYXFLOW_RUNS_ADDR"
    assert f"runs at {runs_addr}" in refused.value.message
