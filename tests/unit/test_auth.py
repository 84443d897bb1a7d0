"""Credentials from gRPC metadata: an API key, or the internal secret plus a tenant."""

from __future__ import annotations

import pytest

from nyxflow.auth import (
    AUTHORIZATION,
    INTERNAL,
    TENANT,
    Caller,
    bearer_metadata,
    caller_from_metadata,
    hash_key,
    internal_metadata,
    require_internal,
)
from nyxflow.errors import Unauthenticated

SECRET = "s3cret"


def test_a_bearer_key_is_the_caller() -> None:
    assert caller_from_metadata(bearer_metadata("k-123"), SECRET) == Caller(api_key="k-123")


@pytest.mark.parametrize(
    "metadata",
    [
        (("Authorization", "Bearer k-123"),),
        ((AUTHORIZATION, "bearer k-123"),),
        ((AUTHORIZATION, "BEARER   k-123  "),),
        (("user-agent", "grpc"), (AUTHORIZATION, "Bearer k-123")),
    ],
)
def test_header_name_and_scheme_are_case_insensitive(metadata: tuple[tuple[str, str], ...]) -> None:
    assert caller_from_metadata(metadata, SECRET) == Caller(api_key="k-123")


def test_internal_credentials_name_the_tenant() -> None:
    assert caller_from_metadata(internal_metadata(SECRET, "t-1"), SECRET) == Caller(tenant_id="t-1")


def test_internal_credentials_win_over_a_bearer_key() -> None:
    metadata = (*bearer_metadata("k-123"), *internal_metadata(SECRET, "t-1"))
    assert caller_from_metadata(metadata, SECRET) == Caller(tenant_id="t-1")


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("user-agent", "grpc"),),
        ((AUTHORIZATION, ""),),
        ((AUTHORIZATION, "Bearer"),),
        ((AUTHORIZATION, "Bearer    "),),
        ((AUTHORIZATION, "Basic dXNlcjpwYXNz"),),
        ((AUTHORIZATION, "k-123"),),
        internal_metadata("wrong", "t-1"),
        internal_metadata("", "t-1"),
        internal_metadata(SECRET + "x", "t-1"),
        ((INTERNAL, SECRET),),
        internal_metadata(SECRET, ""),
        # a wrong internal secret is refused even next to a valid-looking key
        (*bearer_metadata("k-123"), *internal_metadata("wrong", "t-1")),
    ],
)
def test_missing_or_wrong_credentials_are_unauthenticated(
    metadata: tuple[tuple[str, str], ...],
) -> None:
    with pytest.raises(Unauthenticated):
        caller_from_metadata(metadata, SECRET)


def test_an_empty_internal_secret_is_never_taken() -> None:
    """A service started with an empty secret let a client sending an empty
    x-nyxflow-internal header act as any tenant."""
    with pytest.raises(Unauthenticated):
        caller_from_metadata(internal_metadata("", "t-1"), "")
    with pytest.raises(Unauthenticated):
        require_internal(((INTERNAL, ""),), "")


def test_binary_metadata_values_are_ignored() -> None:
    metadata: tuple[tuple[str, str | bytes], ...] = (
        (AUTHORIZATION, b"Bearer k-123"),
        (TENANT, "t-1"),
    )
    with pytest.raises(Unauthenticated):
        caller_from_metadata(metadata, SECRET)


def test_keys_are_stored_as_their_sha256() -> None:
    digest = hash_key("k-123")
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert digest == hash_key("k-123") != hash_key("k-124")
    assert "k-123" not in digest
