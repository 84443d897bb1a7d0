"""`nyxflow`: run the suite and talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import typer

from nyxflow import events as ev
from nyxflow.auth import Metadata
from nyxflow.cli import render
from nyxflow.cli.admin import admin_app
from nyxflow.cli.connection import (
    Clients,
    connect,
    err,
    key_metadata,
    load_settings,
    plain_errors,
    run_async,
)
from nyxflow.cli.demo import create_demo
from nyxflow.cli.follow import EXIT_DETACHED, EXIT_FOR_STATUS, Detached, follow_run
from nyxflow.cli.paging import read_pages
from nyxflow.cli.projects import pipeline_app, project_app
from nyxflow.cli.supervisor import (
    SERVICES,
    ServiceExited,
    StopSignal,
    Supervisor,
    catch_stop_signals,
    ignore_stop_signals,
    wait_grpc_serving,
    wait_http_ok,
)
from nyxflow.client import left_out_from
from nyxflow.errors import FailedPrecondition, InvalidArgument, Unavailable
from nyxflow.settings import CommonSettings
from nyxflow.templates import parse_template
from nyxflow.v1 import common_pb2 as pb

app = typer.Typer(help="nyxflow: durable LLM workflows, streamed live.", no_args_is_help=True)
workflow_app = typer.Typer(help="Create, list, show, duplicate, delete.")
run_app = typer.Typer(help="Start, follow, list, pause, cancel runs.")
step_app = typer.Typer(help="Retry a step, choose an alternative.")
app.add_typer(workflow_app, name="workflow")
app.add_typer(run_app, name="run")
app.add_typer(step_app, name="step")
db_app = typer.Typer(help="The runs service's database.")
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(project_app, name="project")
app.add_typer(pipeline_app, name="pipeline")

JSON = typer.Option(False, "--json", help="Machine-readable output.")
# The wire's int32: larger, the request could not be built, and a traceback was all one saw.
INT32_MAX = 2**31 - 1
DETACHED = "detached{}: the run goes on; follow it with `nyxflow run follow {}`"
EXIT_CODES = (
    "Exit code: 0 completed, 3 failed, 4 paused, 5 cancelled, 6 detached (it could no longer"
    " be followed), 130 Ctrl-C (detached); 1 an error, 2 a usage error."
)


class UpSettings(CommonSettings):
    api_key: str = "dev-key"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080


def local_url(host: str, port: int) -> str:
    """Where this machine reaches a gateway listening on `host`: every interface is reached
    at loopback, and an IPv6 address goes in brackets."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@app.command()
def up(
    demo: bool = typer.Option(True, help="Create a demo workflow and a pending run."),
    start_timeout: float = typer.Option(90.0, help="Seconds to wait for the services."),
) -> None:
    """Start runs, engine and gateway; Ctrl-C (or SIGTERM, SIGHUP) stops all three."""
    with plain_errors():
        _up(demo, start_timeout)


def _up(demo: bool, start_timeout: float) -> None:
    settings = load_settings(UpSettings)
    # checked before anything starts, not once all three are up and the demo is sent
    md = key_metadata(settings.api_key, "NYXFLOW_API_KEY")
    supervisor = Supervisor.with_shared_secret(settings.metrics_port)
    base = local_url(settings.gateway_host, settings.gateway_port)
    catch_stop_signals()
    # Not restored on the way out: a signal between the stop and the exit raised out of `up`.
    try:
        try:
            supervisor.start("runs")
            wait_grpc_serving(settings.runs_addr, start_timeout, supervisor.running_check("runs"))
            supervisor.start("engine")
            wait_grpc_serving(
                settings.engine_addr, start_timeout, supervisor.running_check("engine")
            )
            supervisor.start("gateway")
            wait_http_ok(f"{base}/healthz", start_timeout, supervisor.running_check("gateway"))
            _announce(settings, supervisor, base, md, demo)
            while not (dead := supervisor.dead()):
                time.sleep(0.5)
            err.print(render.line((f"{supervisor.how_ended(dead)}; stopping the others", "red")))
            raise typer.Exit(1)
        except (TimeoutError, ServiceExited) as error:
            err.print(render.line((str(error), "red")))
            raise typer.Exit(1) from None
    except (KeyboardInterrupt, StopSignal):  # also one that came while reporting the above
        ignore_stop_signals()  # the handler did; not an interrupt raised by other means
        err.print("stopping…")
    finally:
        ignore_stop_signals()  # a second signal must not cut the stop short
        supervisor.stop()


def _announce(
    settings: UpSettings, supervisor: Supervisor, base: str, md: Metadata, demo: bool
) -> None:
    # soft_wrap: an id or URL cut at the terminal's width could not be copied whole
    err.print(render.line(("nyxflow is up", "green"), f": {', '.join(SERVICES)}"))
    err.print(f"  page      {base}/", soft_wrap=True)
    err.print(f"  API key   {settings.api_key}", soft_wrap=True)
    err.print(
        f"  admin key {supervisor.env['NYXFLOW_ADMIN_KEY']}  (NYXFLOW_ADMIN_KEY)", soft_wrap=True
    )
    if demo:
        workflow, run = asyncio.run(create_demo(settings.runs_addr, md))
        err.print(f"  demo      workflow {workflow.id}, run {run.id} (pending)", soft_wrap=True)
        err.print(
            f"  SSE       {base}/v1/runs/{run.id}/events?access_token={settings.api_key}",
            soft_wrap=True,
        )
    err.print("Ctrl-C stops all three.")


# --- workflows --------------------------------------------------------------------------


@workflow_app.command("create")
@run_async
async def workflow_create(
    file: Path = typer.Option(..., "-f", "--file", help="A YAML or JSON template."),
    as_json: bool = JSON,
) -> None:
    """Create a workflow from a template file."""
    request = parse_template(await asyncio.to_thread(_read_template, file)).to_request()
    async with connect() as c:
        workflow = await c.runs.create_workflow_from(request)
    render.as_json(workflow) if as_json else render.out.print(f"created {workflow.id}")


def _read_template(file: Path) -> str:
    """The user's file, or a usage error naming it (missing, a directory, not UTF-8)."""
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InvalidArgument(
            f"not UTF-8 text (byte {error.start}): {file}", field="file"
        ) from None
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise InvalidArgument(f"{reason}: {file}", field="file") from None


@workflow_app.command("list")
@run_async
async def workflow_list(as_json: bool = JSON) -> None:
    async with connect() as c:
        workflows = await c.runs.list_workflows()
    render.as_json(list(workflows)) if as_json else render.workflows_table(workflows)


@workflow_app.command("show")
@run_async
async def workflow_show(workflow_id: str, as_json: bool = JSON) -> None:
    async with connect() as c:
        workflow = await c.runs.get_workflow(workflow_id)
        if as_json:
            await _with_outputs(c, workflow.last_run_id, workflow.steps)
    if as_json:
        render.as_json(workflow)
        return
    render.out.print(render.line((workflow.name, "bold"), " ", render.status(workflow.status)))
    render.steps_table(list(workflow.steps))


@workflow_app.command("duplicate")
@run_async
async def workflow_duplicate(workflow_id: str, name: str = "", as_json: bool = JSON) -> None:
    async with connect() as c:
        copy = await c.runs.duplicate_workflow(workflow_id, name)
    render.as_json(copy) if as_json else render.out.print(f"created {copy.id}")


@workflow_app.command("delete")
@run_async
async def workflow_delete(workflow_id: str) -> None:
    async with connect() as c:
        await c.runs.delete_workflow(workflow_id)
    render.out.print(f"deleted {workflow_id}")


# --- runs ---------------------------------------------------------------------------------


async def _start_and_follow(run_id: str, follow_it: bool, tokens: bool, as_json: bool) -> None:
    async with connect() as c:
        if not follow_it:
            await _start(c, run_id)
            render.out.print(run_id)
            return
        await _follow_to_the_end(c, run_id, True, tokens, as_json)


async def _start(c: Clients, run_id: str) -> None:
    """Until the engine holds the run (its first event); then detach. A run someone else
    started first (a browser that opened it) is under way all the same. An engine silent
    for `c.execute_silence_s` (frozen, say) is not waited on for ever."""
    waiting = asyncio.timeout(c.execute_silence_s)
    try:
        async with waiting, contextlib.aclosing(c.engine.execute(run_id)) as events:
            async for _ in events:
                break
    except FailedPrecondition:
        if (await c.runs.get_run(run_id)).status == ev.PENDING:
            raise  # refused for a reason of its own, not because it has started
    except TimeoutError:
        if not waiting.expired():
            raise
        if (await c.runs.get_run(run_id)).status == ev.PENDING:
            raise Unavailable(
                f"the engine said nothing for {c.execute_silence_s:g} s and run {run_id} is "
                f"still pending; `nyxflow run follow {run_id}` starts it if no engine has"
            ) from None


async def _with_outputs(c: Clients, run_id: str, steps: Sequence[pb.Step]) -> None:
    """The outputs a whole read left out (past its budget) filled in: the steps' own (and their
    alternatives) read step by step, the items' and the items it left unlisted from their
    pages, so that --json shows every item and output whole as before."""
    await c.runs.fill_left_out_steps(steps)
    for step in steps:
        start = left_out_from(step)
        if start is None or not run_id:
            continue
        stored = await c.runs.all_step_items(run_id, step.id, start)
        del step.items[sum(1 for i in step.items if i.index < start) :]  # listed in order
        step.items.extend(stored)
        step.items_left_out = 0


async def _follow_to_the_end(
    c: Clients, run_id: str, start: bool, tokens: bool, as_json: bool
) -> None:
    """Follow the run to its end and exit with its status's code; Ctrl-C, or a run that can
    no longer be followed, detaches (the run goes on)."""
    try:
        final = await follow_run(c, run_id, start=start, tokens=tokens, as_json=as_json)
    except asyncio.CancelledError:
        err.print(DETACHED.format("", run_id))
        raise typer.Exit(130) from None
    except Detached as error:
        err.print(DETACHED.format(f" ({error})", run_id))
        raise typer.Exit(EXIT_DETACHED) from None
    if code := EXIT_FOR_STATUS[final]:
        raise typer.Exit(code)


@run_app.command("start", epilog=EXIT_CODES)
@run_async
async def run_start(
    workflow_id: str,
    follow_it: bool = typer.Option(False, "--follow", help="Watch it to the end."),
    tokens: bool = typer.Option(False, "--tokens", help="Stream the tokens too."),
    as_json: bool = JSON,
) -> None:
    """Start a new run of a workflow (Ctrl-C while following detaches; the run goes on)."""
    async with connect() as c:
        run = await c.runs.create_run(workflow_id)
    await _start_and_follow(run.id, follow_it, tokens, as_json)


@run_app.command("follow", epilog=EXIT_CODES)
@run_async
async def run_follow(
    run_id: str,
    tokens: bool = typer.Option(False, "--tokens"),
    as_json: bool = JSON,
) -> None:
    """Watch a run: a pending one is started, any other replayed and followed."""
    async with connect() as c:
        run = await c.runs.get_run(run_id)
        await _follow_to_the_end(c, run_id, run.status == ev.PENDING, tokens, as_json)


@run_app.command("list")
@run_async
async def run_list(
    status: str = typer.Option("", help="Only runs with this status."),
    workflow: str = typer.Option("", help="Only this workflow's runs."),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Runs per page."),
    page_token: str = typer.Option(
        "", "--page-token", help="Continue after an earlier page (the token it printed)."
    ),
    every: bool = typer.Option(False, "--all", help="Every run, page after page."),
    as_json: bool = JSON,
) -> None:
    """Runs, newest first: a page of them, and on stderr how to ask for the next one."""
    async with connect() as c:

        async def fetch(token: str) -> tuple[Iterable[pb.Run], str]:
            page = await c.runs.list_runs_page(workflow, status, limit, token)
            return page.runs, page.next_page_token

        runs, page_token = await read_pages(fetch, page_token, every)
    render.as_json(list(runs)) if as_json else render.runs_table(runs)
    if page_token:  # on stderr: `--json` stays a list, and a pipe reads the runs alone
        err.print(f"older runs: --page-token {page_token}")


@run_app.command("show")
@run_async
async def run_show(run_id: str, as_json: bool = JSON) -> None:
    async with connect() as c:
        run = await c.runs.get_run(run_id)
        if as_json:  # the steps are the latest run's, whose items ListStepItems lists
            await _with_outputs(c, run.superseded_by or run.id, run.steps)
    if as_json:
        render.as_json(run)
        return
    phase = f" · phase {run.phase}" if run.phase else ""
    render.out.print(
        render.line(f"run {run.id} ", render.status(run.status), f"{phase} {run.error}")
    )
    if run.superseded_by:
        superseded = f"superseded by run {run.superseded_by}: the steps below are its state"
        render.out.print(render.line((superseded, "yellow")))
    render.steps_table(list(run.steps))


@run_app.command("pause")
@run_async
async def run_pause(run_id: str) -> None:
    """Pause: at once if pending, else at the next step or fan-out item."""
    async with connect() as c:
        run = await c.runs.pause_run(run_id)
    note = " (at the next step boundary)" if run.pause_requested else ""
    render.out.print(render.line(f"{run.id} ", render.status(run.status), note))


@run_app.command("cancel")
@run_async
async def run_cancel(run_id: str) -> None:
    async with connect() as c:
        run = await c.runs.cancel_run(run_id)
    render.out.print(render.line(f"{run.id} ", render.status(run.status)))


@run_app.command("resume", epilog=EXIT_CODES)
@run_async
async def run_resume(
    workflow_id: str,
    follow_it: bool = typer.Option(False, "--follow"),
    tokens: bool = typer.Option(False, "--tokens"),
    as_json: bool = JSON,
) -> None:
    """Resume a paused or failed workflow: every step not completed runs, in order."""
    async with connect() as c:
        run = await c.runs.resume_workflow(workflow_id)
    await _start_and_follow(run.id, follow_it, tokens, as_json)


@run_app.command("rerun", epilog=EXIT_CODES)
@run_async
async def run_rerun(
    workflow_id: str,
    follow_it: bool = typer.Option(False, "--follow"),
    as_json: bool = JSON,
) -> None:
    """Reset every step and run the workflow again."""
    async with connect() as c:
        run = await c.runs.rerun_workflow(workflow_id)
    await _start_and_follow(run.id, follow_it, False, as_json)


# --- steps --------------------------------------------------------------------------------


@step_app.command("retry", epilog=EXIT_CODES)
@run_async
async def step_retry(
    step_id: str,
    cascade: bool = typer.Option(False, "--cascade", help="Retry every later step too."),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=0, max=INT32_MAX, help="Raise (or set) the limit."
    ),
    auto_continue: int | None = typer.Option(None, "--auto-continue", min=0, max=INT32_MAX),
    model: str | None = typer.Option(None, "--model"),
    providers: list[str] | None = typer.Option(
        None, "--provider", help="The step's chain, in order (repeat); e.g. google, local."
    ),
    follow_it: bool = typer.Option(False, "--follow"),
) -> None:
    """Reset the step (and with --cascade every later one), changed as asked, and start a
    new run."""
    async with connect() as c:
        run = await c.runs.retry_step(
            step_id,
            cascade,
            max_tokens=max_tokens,
            auto_continue=auto_continue,
            model=model,
            providers=providers or None,
        )
    await _start_and_follow(run.id, follow_it, False, False)


@step_app.command("select")
@run_async
async def step_select(step_id: str, index: int = typer.Argument(..., min=0, max=INT32_MAX)) -> None:
    """Use alternative INDEX as the step's output."""
    async with connect() as c:
        step = await c.runs.select_alternative(step_id, index)
    index = step.selected_index
    render.out.print(f"{step.name}: alternative {index + 1} (index {index}) selected")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations to NYXFLOW_DATABASE_URL (SQLite or PostgreSQL)."""
    # The runs service owns the schema; run its migration in its own process.
    done = subprocess.run([sys.executable, "-m", "nyxflow_runs", "migrate"], check=False)
    if done.returncode != 0:
        raise typer.Exit(1)
    err.print(render.line(("database is at the latest schema", "green")))


@app.command()
def version() -> None:
    """Print the version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("nyxflow"))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
