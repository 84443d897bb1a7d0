"""`nyxflow admin`: tenants, API keys and moving projects, with NYXFLOW_ADMIN_KEY."""

from __future__ import annotations

import math
import shlex
import time

import typer

from nyxflow.cli import render
from nyxflow.cli.connection import connect_admin, err, run_async

admin_app = typer.Typer(help="Operator commands (need NYXFLOW_ADMIN_KEY).")
tenant_app = typer.Typer(help="Create and list tenants.")
key_app = typer.Typer(help="Create, list and revoke API keys.")
admin_app.add_typer(tenant_app, name="tenant")
admin_app.add_typer(key_app, name="key")

JSON = typer.Option(False, "--json", help="Machine-readable output.")


@tenant_app.command("create")
@run_async
async def tenant_create(
    slug: str,
    name: str = typer.Option("", help="Display name (default: the slug)."),
    provider: list[str] = typer.Option([], "--provider", help="Default chain entry, repeatable."),
    as_json: bool = JSON,
) -> None:
    """Create a tenant."""
    async with connect_admin() as admin:
        tenant = await admin.create_tenant(slug, name, provider)
    render.as_json(tenant) if as_json else render.out.print(f"created tenant {tenant.slug}")


@tenant_app.command("list")
@run_async
async def tenant_list(as_json: bool = JSON) -> None:
    """Every tenant."""
    async with connect_admin() as admin:
        tenants = await admin.list_tenants()
    if as_json:
        render.as_json(list(tenants))
        return
    table = render.make_table("id", "slug", "name", "default providers")
    for t in tenants:
        render.add_row(table, t.id, t.slug, t.name, ", ".join(t.default_providers))
    render.out.print(table)


@key_app.command("create")
@run_async
async def key_create(
    tenant: str,
    name: str = typer.Option(..., help="What the key is for."),
    expires_in_days: float = typer.Option(0, help="0 = never expires."),
    as_json: bool = JSON,
) -> None:
    """Create a key; its secret is printed once and never again."""
    if not (math.isfinite(expires_in_days) and expires_in_days >= 0):
        # -5 or nan made a key that never expires, without a word.
        raise typer.BadParameter("a number of days, 0 or more", param_hint="--expires-in-days")
    expires_at = time.time() + expires_in_days * 86400 if expires_in_days > 0 else 0.0
    async with connect_admin() as admin:
        created = await admin.create_api_key(tenant, name, expires_at)
    if as_json:
        render.as_json(created)
        return
    render.out.print(created.secret)
    err.print(f"key {created.key.id} for {tenant}: store the secret now, it is not shown again")


@key_app.command("list")
@run_async
async def key_list(tenant: str, as_json: bool = JSON) -> None:
    """A tenant's keys (never their secrets)."""
    async with connect_admin() as admin:
        keys = await admin.list_api_keys(tenant)
    if as_json:
        render.as_json(list(keys))
        return
    table = render.make_table("id", "name", "state")
    for k in keys:
        render.add_row(table, k.id, k.name, _state(k.revoked_at, k.expires_at, time.time()))
    render.out.print(table)


@key_app.command("revoke")
@run_async
async def key_revoke(key_id: str) -> None:
    """Revoke a key at once."""
    async with connect_admin() as admin:
        await admin.revoke_api_key(key_id)
    render.out.print(f"revoked {key_id}")


@admin_app.command("move-project")
@run_async
async def move_project(
    project_id: str,
    to_tenant: str,
    dry_run: bool = typer.Option(False, "--dry-run", help="Count and list conflicts only."),
    on_conflict: str = typer.Option("fail", help="fail | replace_empty"),
    on_persona_conflict: str = typer.Option(
        "fail",
        help="A persona the steps use differs in the target: fail | keep_target (the steps "
        "use the target's) | rename (the source's copied under a new name the steps use).",
    ),
    as_json: bool = JSON,
) -> None:
    """Move a project and everything under it to another tenant, in one transaction."""
    async with connect_admin() as admin:
        report = await admin.move_project(
            project_id,
            to_tenant,
            dry_run=dry_run,
            on_conflict=on_conflict,
            on_persona_conflict=on_persona_conflict,
        )
    if as_json:
        render.as_json(report)
        return
    table = render.make_table("table", "rows", ids=())
    for name, count in report.counts.items():
        render.add_row(table, name, str(count))
    render.out.print(table)
    for c in report.conflicts:
        if c.kind == "persona":
            note = c.detail + (f"; the source's copied as {c.renamed_to!r}" if c.renamed_to else "")
        else:
            note = "empty, replaceable" if c.empty else "not empty"
        render.out.print(render.line(("conflict", "yellow"), f" {c.kind} {c.name} ({note})"))
    for p in report.paths:
        render.out.print(f"path of {p.kind} {p.name}: {p.from_path} → {p.to_path}")
    folders = sorted({(p.from_path, p.to_path) for p in report.paths if p.kind == "repository"})
    if folders:
        # The paths are only the records': the folders are on the engines' machines.
        render.out.print(render.line(("move these folders on the engines' machines:", "yellow")))
        for before, after in folders:
            render.out.print(f"  mv {shlex.quote(before)} {shlex.quote(after)}")
    render.out.print("moved" if report.moved else "dry run: nothing changed")


def _state(revoked_at: float, expires_at: float, now: float) -> str:
    if revoked_at:
        return "revoked"
    if not expires_at:
        return "active"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires_at))
    return f"expired {when}" if expires_at <= now else f"expires {when}"
