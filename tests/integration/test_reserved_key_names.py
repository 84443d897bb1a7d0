"""The names runs tells its NYXFLOW_API_KEY key by are not an operator's to give: a rotation of
that setting revokes the keys so named, and revoked an operator's key named `default` with them."""

from __future__ import annotations

import pytest

from nyxflow.auth import bearer_metadata
from nyxflow.client import AdminClient, open_channel
from nyxflow.errors import InvalidArgument
from nyxflow_runs.store.workflows import ENV_KEY, LEGACY_ENV_KEY
from tests.integration.test_env_key_rotation import ROTATED, taken
from tests.support.inprocess import ADMIN_KEY, runs_service


@pytest.mark.parametrize("name", [LEGACY_ENV_KEY, ENV_KEY, f"  {LEGACY_ENV_KEY} "])
async def test_a_key_named_as_the_env_key_is_refused_naming_the_field(
    database_url: str, name: str
) -> None:
    async with (
        runs_service(database_url, api_key="dev-key") as settings,
        open_channel(settings.runs_listen) as channel,
    ):
        admin = AdminClient(channel, bearer_metadata(ADMIN_KEY))
        with pytest.raises(InvalidArgument) as refused:
            await admin.create_api_key("default", name)
        assert refused.value.field == "name"
        assert "NYXFLOW_API_KEY" in refused.value.message
        made = await admin.create_api_key("default", "default-laptop")  # any other name

    async with runs_service(database_url, api_key=ROTATED) as settings:
        assert not await taken(settings, "dev-key")  # rotated
        assert await taken(settings, made.secret)  # the operator's stays
