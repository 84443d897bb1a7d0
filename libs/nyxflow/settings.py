"""Settings shared by every service; each service subclasses this once."""

from __future__ import annotations

import ipaddress
import logging

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_INTERNAL_SECRET = (
    "nyxflow-dev-internal-secret"  # loopback only (runs and the engine refuse it beyond)
)
MIN_SECRET_CHARS = 16


class CommonSettings(BaseSettings):
    """Environment variables all start with NYXFLOW_."""

    # inf and nan were taken: a timeout of inf failed every call at once, an interval of inf
    # meant never
    model_config = SettingsConfigDict(env_prefix="NYXFLOW_", extra="ignore", allow_inf_nan=False)

    # Shared by the services so that the engine may write on behalf of a run's tenant.
    internal_secret: str = DEV_INTERNAL_SECRET
    log_level: str = "INFO"
    runs_addr: str = "127.0.0.1:50051"
    engine_addr: str = "127.0.0.1:50052"
    # 0 failed every call at once, and so did 1e10 (beyond what gRPC takes for a deadline)
    rpc_timeout_s: float = Field(default=10.0, gt=0, le=86400)
    # Runs and engine: each tenant's repositories only under <root>/<tenant id>/ (repos.py);
    # unset, any absolute path (one team on its own machine).
    repos_root: str | None = None
    metrics_port: int = 0  # runs and engine: Prometheus metrics on this port (0 = off)
    metrics_host: str = "127.0.0.1"
    # OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces; unset = tracing off.
    otlp_endpoint: str | None = None

    @field_validator("log_level")
    @classmethod
    def _a_level_logging_knows(cls, level: str) -> str:
        """logging.setLevel's refusal was a traceback at start, naming no variable."""
        names = [name for name in logging.getLevelNamesMapping() if name != "NOTSET"]
        if level.upper() not in names:
            raise ValueError(f"not a log level: one of {', '.join(names)} (any case)")
        return level.upper()


class InternalSettings(CommonSettings):
    """A service that takes calls (runs) or makes them (engine) with the internal secret."""

    @field_validator("internal_secret")
    @classmethod
    def _a_secret_worth_the_name(cls, secret: str) -> str:
        """An empty secret matched a client's empty x-nyxflow-internal header: any tenant."""
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"{'is empty' if not secret else f'has {len(secret)} characters'}: at least "
                f"{MIN_SECRET_CHARS}, shared by runs and the engine (e.g. openssl rand -hex 32)"
            )
        return secret


def no_dev_secret_beyond_loopback(listen: str, secret: object) -> str:
    """runs and the engine refuse to listen beyond loopback with the well-known secret: anyone
    who reached the port would have its internal credentials, and act as any tenant."""
    if secret == DEV_INTERNAL_SECRET and not _loopback(listen):
        raise ValueError(
            "listens beyond loopback with the development NYXFLOW_INTERNAL_SECRET, which "
            "lets anyone who reaches it act as any tenant: set a secret of your own, shared "
            "by runs and the engine"
        )
    return listen


def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]") or "0.0.0.0"  # ":50051" is every address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
