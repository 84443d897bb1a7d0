"""Credentials in gRPC metadata: a tenant's API key, or the internal secret plus a tenant id."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from nyxflow.errors import Unauthenticated

AUTHORIZATION = "authorization"
INTERNAL = "x-nyxflow-internal"
TENANT = "x-nyxflow-tenant"

Metadata = tuple[tuple[str, str], ...]


def hash_key(api_key: str) -> str:
    """API keys are stored as their SHA-256: they are random, so no salt or KDF is needed."""
    return hashlib.sha256(api_key.encode()).hexdigest()


MAX_KEY = 512  # far beyond any key made here; gRPC refuses big metadata with its own words
KEY_SHAPE = re.compile(r"[\x21-\x7e]+")  # what gRPC metadata can carry


def checked_key(api_key: str) -> str:
    """The key, or Unauthenticated: one gRPC cannot carry as metadata (non-ASCII, a control
    character such as a .env file's trailing newline, 20 KB) fails in the client, before any
    call, with an error that names neither the key nor the cause."""
    if len(api_key) > MAX_KEY or not KEY_SHAPE.fullmatch(api_key):
        raise Unauthenticated("malformed API key")
    return api_key


def bearer_metadata(api_key: str) -> Metadata:
    return ((AUTHORIZATION, f"Bearer {checked_key(api_key)}"),)


def internal_metadata(secret: str, tenant_id: str) -> Metadata:
    return ((INTERNAL, secret), (TENANT, tenant_id))


def engine_metadata(secret: str) -> Metadata:
    """The internal secret for no tenant in particular: the engine's calls across tenants."""
    return ((INTERNAL, secret),)


def _is_secret(presented: str, secret: str) -> bool:
    """Never an empty one: a service started with an empty secret would take an empty header."""
    return bool(presented) and hmac.compare_digest(presented.encode(), secret.encode())


def require_internal(metadata: Iterable[tuple[str, str | bytes]], secret: str) -> None:
    """UNAUTHENTICATED unless the call carries the internal secret (any tenant or none)."""
    values = {key.lower(): value for key, value in metadata if isinstance(value, str)}
    internal = values.get(INTERNAL)
    if internal is None or not _is_secret(internal, secret):
        raise Unauthenticated("this call needs the internal credentials")


@dataclass(frozen=True)
class Caller:
    """Who is calling: exactly one of `api_key` (a tenant's key) or `tenant_id` (internal)."""

    api_key: str | None = None
    tenant_id: str | None = None


def caller_from_metadata(metadata: Iterable[tuple[str, str | bytes]], secret: str) -> Caller:
    values = {key.lower(): value for key, value in metadata if isinstance(value, str)}
    internal = values.get(INTERNAL)
    if internal is not None:
        if not _is_secret(internal, secret):
            raise Unauthenticated("invalid internal credentials")
        tenant = values.get(TENANT)
        if not tenant:
            raise Unauthenticated(f"{TENANT} is required with internal credentials")
        return Caller(tenant_id=tenant)
    header = values.get(AUTHORIZATION, "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated("missing API key: send 'authorization: Bearer <key>'")
    return Caller(api_key=key.strip())
