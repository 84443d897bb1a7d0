"""The Admin gRPC service: operator calls, each checked against the admin key first."""

from __future__ import annotations

import hmac
import math
from typing import TypeAlias

import grpc
from google.protobuf.message import Message

from nyxflow.auth import caller_from_metadata
from nyxflow.errors import InvalidArgument, Unauthenticated
from nyxflow.v1 import admin_pb2, admin_pb2_grpc
from nyxflow_runs import models
from nyxflow_runs import validation as valid
from nyxflow_runs.store import MoveReport, Store
from nyxflow_runs.store.admin import FAIL, KEEP_TARGET, RENAME, REPLACE_EMPTY
from nyxflow_runs.store.workflows import ENV_KEY, LEGACY_ENV_KEY
from nyxflow_runs.tenancy import Tenancy

Ctx: TypeAlias = grpc.aio.ServicerContext


def _tenant(row: models.Tenant) -> admin_pb2.Tenant:
    return admin_pb2.Tenant(
        id=row.id,
        slug=row.slug,
        name=row.name,
        created_at=row.created_at,
        default_providers=row.default_providers or [],
    )


def _key(row: models.ApiKey) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        created_at=row.created_at,
        revoked_at=row.revoked_at or 0.0,
        expires_at=row.expires_at or 0.0,
    )


def _report(report: MoveReport) -> admin_pb2.MoveProjectResponse:
    return admin_pb2.MoveProjectResponse(
        counts=report.counts,
        conflicts=[
            admin_pb2.MoveConflict(
                kind=c.kind,
                name=c.name,
                target_id=c.target_id,
                empty=c.empty,
                detail=c.detail,
                renamed_to=c.renamed_to,
            )
            for c in report.conflicts
        ],
        moved=report.moved,
        paths=[
            admin_pb2.MovedPath(kind=p.kind, name=p.name, from_path=p.before, to_path=p.after)
            for p in report.paths
        ],
    )


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        store: Store,
        tenancy: Tenancy,
        admin_key: str | None,
        secret: str,
        repos_root: str | None = None,
    ) -> None:
        self._store = store
        self._repos_root = repos_root
        self._tenancy = tenancy
        self._admin_key = admin_key
        self._secret = secret

    def _require_admin(self, request: Message, context: Ctx) -> None:
        if not self._admin_key:
            raise Unauthenticated("the admin API is off: set NYXFLOW_ADMIN_KEY")
        caller = caller_from_metadata(context.invocation_metadata() or (), self._secret)
        key = caller.api_key or ""
        if not hmac.compare_digest(key.encode(), self._admin_key.encode()):
            raise Unauthenticated("admin calls need the admin key")
        valid.no_nul(request)

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: Ctx
    ) -> admin_pb2.Tenant:
        self._require_admin(request, context)
        slug = valid.slug(request.slug, "slug")
        name = valid.text(request.name or request.slug, "name", 200)
        chain = valid.provider_chain(request.default_providers, "default_providers")
        return _tenant(await self._store.create_tenant(slug, name, chain))

    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: Ctx
    ) -> admin_pb2.ListTenantsResponse:
        self._require_admin(request, context)
        tenants = await self._store.list_tenants()
        return admin_pb2.ListTenantsResponse(tenants=[_tenant(t) for t in tenants])

    async def SetTenantProviders(
        self, request: admin_pb2.SetTenantProvidersRequest, context: Ctx
    ) -> admin_pb2.Tenant:
        self._require_admin(request, context)
        tenant = valid.require_id(request.tenant, "tenant")
        chain = valid.provider_chain(request.default_providers, "default_providers")
        return _tenant(await self._store.set_tenant_providers(tenant, chain))

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Ctx
    ) -> admin_pb2.CreateApiKeyResponse:
        self._require_admin(request, context)
        tenant = valid.require_id(request.tenant, "tenant")
        name = valid.text(request.name, "name", 200)
        if name in (ENV_KEY, LEGACY_ENV_KEY):
            # Runs tells the key it registers from NYXFLOW_API_KEY by its name: a rotation
            # revokes the keys so named, and an operator's would go with them.
            raise InvalidArgument(
                f"{name!r} is kept for the key runs registers from NYXFLOW_API_KEY "
                "(rotating it revokes keys so named): choose another name",
                field="name",
            )
        if not (request.expires_at >= 0 and math.isfinite(request.expires_at)):
            raise InvalidArgument("must be a finite, non-negative epoch time", field="expires_at")
        key, secret = await self._store.create_api_key(tenant, name, request.expires_at or None)
        return admin_pb2.CreateApiKeyResponse(key=_key(key), secret=secret)

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Ctx
    ) -> admin_pb2.ListApiKeysResponse:
        self._require_admin(request, context)
        tenant = valid.require_id(request.tenant, "tenant")
        keys = await self._store.list_api_keys(tenant)
        return admin_pb2.ListApiKeysResponse(keys=[_key(k) for k in keys])

    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Ctx
    ) -> admin_pb2.ApiKey:
        self._require_admin(request, context)
        key = await self._store.revoke_api_key(valid.require_id(request.key_id, "key_id"))
        await self._tenancy.key_revoked()  # refused at once, on every replica
        return _key(key)

    async def MoveProject(
        self, request: admin_pb2.MoveProjectRequest, context: Ctx
    ) -> admin_pb2.MoveProjectResponse:
        self._require_admin(request, context)
        project_id = valid.require_id(request.project_id, "project_id")
        to_tenant = valid.require_id(request.to_tenant, "to_tenant")
        on_conflict = request.on_conflict or FAIL
        if on_conflict not in (FAIL, REPLACE_EMPTY):
            raise InvalidArgument(f"one of {FAIL}, {REPLACE_EMPTY}", field="on_conflict")
        on_persona_conflict = request.on_persona_conflict or FAIL
        if on_persona_conflict not in (FAIL, KEEP_TARGET, RENAME):
            raise InvalidArgument(
                f"one of {FAIL}, {KEEP_TARGET}, {RENAME}", field="on_persona_conflict"
            )
        report = await self._store.move_project(
            project_id,
            to_tenant,
            dry_run=request.dry_run,
            on_conflict=on_conflict,
            repos_root=self._repos_root,
            on_persona_conflict=on_persona_conflict,
        )
        return _report(report)
