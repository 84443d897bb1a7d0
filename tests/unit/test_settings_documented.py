"""Every setting of every service is in the README's table, so none is undiscoverable."""

from __future__ import annotations

import re
from pathlib import Path

from nyxflow_engine.settings import EngineSettings
from nyxflow_gateway.settings import GatewaySettings
from nyxflow_runs.settings import RunsSettings

README = Path(__file__).parents[2] / "README.md"


def documented() -> set[str]:
    """The variables named in the first cell of each row of the settings table."""
    rows = re.findall(r"^\| (`NYXFLOW_[^|]+)\|", README.read_text(), re.MULTILINE)
    return {name for row in rows for name in re.findall(r"`(NYXFLOW_[A-Z_]+)`", row)}


def test_every_setting_is_in_the_readme_table() -> None:
    fields = {
        f"NYXFLOW_{name.upper()}"
        for cls in (RunsSettings, EngineSettings, GatewaySettings)
        for name in cls.model_fields
    }
    missing = fields - documented()
    assert not missing, sorted(missing)
