"""NYXFLOW_API_KEY changed is the key rotated: the one registered before it is revoked. Each
start used to add the new key and leave the old one valid for ever, the well-known `dev-key`
of a first start with the defaults included."""

from __future__ import annotations

from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, open_channel
from nyxflow.errors import Unauthenticated
from nyxflow_runs.settings import RunsSettings
from tests.support.inprocess import ADMIN_KEY, clients, runs_service

ROTATED = "a-long-random-production-key"


async def taken(settings: RunsSettings, key: str) -> bool:
    async with clients(settings.runs_listen) as c:
        try:
            await c.as_key(key).list_personas()
        except Unauthenticated:
            return False
        return True


async def test_a_changed_api_key_setting_revokes_the_key_before_it(database_url: str) -> None:
    async with runs_service(database_url, api_key="dev-key") as settings:
        assert await taken(settings, "dev-key")
        channel = open_channel(settings.runs_listen)
        try:
            made = await AdminClient(channel, bearer_metadata(ADMIN_KEY)).create_api_key(
                "default", "ci"
            )
        finally:
            await channel.close()

    async with runs_service(database_url, api_key=ROTATED) as settings:
        assert await taken(settings, ROTATED)
        assert not await taken(settings, "dev-key")
        assert await taken(settings, made.secret)  # a key an operator made stays

    # A replica started again with the stale setting revokes nothing newer than its key.
    async with runs_service(database_url, api_key="dev-key") as settings:
        assert await taken(settings, ROTATED)
        assert not await taken(settings, "dev-key")

    async with runs_service(database_url, api_key=ROTATED) as settings:  # a plain restart
        assert await taken(settings, ROTATED)
        assert await taken(settings, made.secret)
