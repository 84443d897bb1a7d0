"""compose.yaml is the reference deployment: parse it (compose cannot run here) and check it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from nyxflow_engine.settings import EngineSettings
from nyxflow_gateway.settings import GatewaySettings
from nyxflow_runs.settings import RunsSettings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_the_scaled_out_shape_with_health_checks() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "runs", "engine", "gateway"}
    assert services["engine"]["deploy"]["replicas"] == 2
    for name, service in services.items():
        if name != "migrate":  # a one-shot job
            assert "healthcheck" in service, f"{name} has no health check"
    assert services["migrate"]["command"] == ["python", "-m", "nyxflow_runs", "migrate"]
    migrated = services["runs"]["depends_on"]["migrate"]
    assert migrated == {"condition": "service_completed_successfully"}
    for name in ("runs", "engine", "gateway"):
        assert services[name]["command"][:3] == ["python", "-m", f"nyxflow_{name}"]


def test_every_variable_is_a_real_setting() -> None:
    known = {
        f"NYXFLOW_{field.upper()}"
        for cls in (RunsSettings, EngineSettings, GatewaySettings)
        for field in cls.model_fields
    }
    text = (ROOT / "compose.yaml").read_text()
    used = set(re.findall(r"\bNYXFLOW_[A-Z_]+\b", text))
    assert used and used <= known, sorted(used - known)
