"""The `nyxflow` CLI against the running services."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from nyxflow import events as ev
from nyxflow_runs.migrate import head_revision
from tests.support.eventually import eventually
from tests.support.gateway_api import create_workflow, get_run, start_run
from tests.support.inprocess import ADMIN_KEY, API_KEY
from tests.support.ports import free_port
from tests.support.processes import ProcessStack
from tests.support.repos import model_replies, planted_repo


def cli_env(stack: ProcessStack, api_key: str = API_KEY) -> dict[str, str]:
    return {
        **os.environ,
        "NYXFLOW_API_KEY": api_key,
        "NYXFLOW_ADMIN_KEY": ADMIN_KEY,
        "NYXFLOW_RUNS_ADDR": stack.runs_addr,
        "NYXFLOW_ENGINE_ADDR": stack.engine_addr,
    }


def cli(
    stack: ProcessStack, *args: str, api_key: str = API_KEY
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nyxflow.cli.main", *args]
    return subprocess.run(
        command, env=cli_env(stack, api_key), capture_output=True, text=True, timeout=60
    )


def created_and_run(stack: ProcessStack, template: Path) -> tuple[str, dict[str, Any]]:
    """The workflow made from `template` and run to its end by the CLI: its id, and its one run
    as `run show --json` gives it."""
    workflow_id = json.loads(
        cli(stack, "workflow", "create", "-f", str(template), "--json").stdout
    )["id"]
    assert cli(stack, "run", "start", workflow_id, "--follow").returncode == 0
    (run,) = json.loads(cli(stack, "run", "list", "--workflow", workflow_id, "--json").stdout)
    return workflow_id, json.loads(cli(stack, "run", "show", run["id"], "--json").stdout)


def test_create_start_follow_and_exit_codes(stack: ProcessStack, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: cli\nsteps:\n  - name: a\n    params: {tokens: 5}\n")
    created = cli(stack, "workflow", "create", "-f", str(good), "--json")
    assert created.returncode == 0, created.stderr
    workflow_id = json.loads(created.stdout)["id"]

    followed = cli(stack, "run", "start", workflow_id, "--follow", "--json")
    assert followed.returncode == 0, followed.stderr
    types = [json.loads(line)["type"] for line in followed.stdout.splitlines()]
    assert types[0] == "run_started" and types[-1] == "run_completed"

    listed = cli(stack, "run", "list", "--workflow", workflow_id, "--json")
    assert [r["status"] for r in json.loads(listed.stdout)] == ["completed"]

    failing = tmp_path / "failing.yaml"
    failing.write_text("name: f\nsteps:\n  - name: a\n    params: {fail: nope}\n")
    failing_id = json.loads(cli(stack, "workflow", "create", "-f", str(failing), "--json").stdout)[
        "id"
    ]
    assert cli(stack, "run", "start", failing_id, "--follow").returncode == 3  # failed

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nsteps:\n  - name: a\n    kind: nope\n")
    refused = cli(stack, "workflow", "create", "-f", str(bad))
    assert refused.returncode == 2 and "steps[0].kind" in refused.stderr


def test_step_select_names_the_alternative_as_the_page_counts_it(
    stack: ProcessStack, tmp_path: Path
) -> None:
    template = tmp_path / "alts.yaml"
    template.write_text(
        "name: alts\nsteps:\n  - name: a\n    alternatives: 3\n    params: {tokens: 4}\n"
        "  - name: b\n    prompt: 'On {{ steps.a.output }}'\n    params: {tokens: 4}\n"
    )
    workflow_id, shown = created_and_run(stack, template)
    step = shown["steps"][0]

    chosen = cli(stack, "step", "select", step["id"], "2")

    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.strip() == "a: alternative 3 (index 2) selected"
    runs = json.loads(cli(stack, "run", "list", "--workflow", workflow_id, "--json").stdout)
    assert runs[0]["status"] == "paused"
    assert runs[0]["error"].startswith("alternative 3 (index 2) of 'a' chosen")


def test_step_retry_with_a_raised_limit_and_another_chain(
    stack: ProcessStack, tmp_path: Path
) -> None:
    template = tmp_path / "cut.yaml"
    template.write_text(
        "name: cut\nsteps:\n  - name: a\n    max_tokens: 4\n    params: {tokens: 9}\n"
    )
    workflow_id, shown = created_and_run(stack, template)
    step = shown["steps"][0]
    assert step["truncated"] is True

    refused = cli(stack, "step", "retry", step["id"], "--provider", "nope")
    assert refused.returncode == 2 and "providers.names[0]" in refused.stderr
    retried = cli(
        stack,
        "step",
        "retry",
        step["id"],
        "--max-tokens",
        "9",
        "--provider",
        "local:m2",
        "--follow",
    )
    assert retried.returncode == 0, retried.stderr
    runs = json.loads(cli(stack, "run", "list", "--workflow", workflow_id, "--json").stdout)
    done = json.loads(cli(stack, "run", "show", runs[0]["id"], "--json").stdout)["steps"][0]
    # proto JSON leaves out false fields
    assert (done.get("truncated", False), done["max_tokens"], done["served_by"]) == (
        False,
        9,
        "local:m2",
    )


def test_db_upgrade_migrates_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    env = {**os.environ, "NYXFLOW_DATABASE_URL": url}
    command = [sys.executable, "-m", "nyxflow.cli.main", "db", "upgrade"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "fresh.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert {"workflows", "steps", "step_items", "runs", "run_events"} <= tables
    assert version == head_revision()


def test_db_upgrade_refuses_a_database_url_it_cannot_use_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "NYXFLOW_DATABASE_URL": "mysql://app:secret@db.example/app"}
    command = [sys.executable, "-m", "nyxflow.cli.main", "db", "upgrade"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "NYXFLOW_DATABASE_URL: no async driver for 'mysql'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


def test_admin_tenants_keys_and_move_project(stack: ProcessStack, tmp_path: Path) -> None:
    slug = f"cli-{uuid.uuid4().hex[:8]}"
    assert cli(stack, "admin", "tenant", "create", slug).returncode == 0
    listed = json.loads(cli(stack, "admin", "tenant", "list", "--json").stdout)
    assert slug in [t["slug"] for t in listed]
    created = cli(stack, "admin", "key", "create", slug, "--name", "ci")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert "not shown again" in created.stderr
    keys = cli(stack, "admin", "key", "list", slug)
    assert "ci" in keys.stdout and secret not in keys.stdout

    template = tmp_path / "t.yaml"
    template.write_text("name: theirs\nsteps:\n  - name: a\n    params: {tokens: 2}\n")
    assert cli(stack, "workflow", "create", "-f", str(template), api_key=secret).returncode == 0
    mine = json.loads(cli(stack, "workflow", "list", "--json").stdout)
    assert "theirs" not in [w["name"] for w in mine]  # the default tenant does not see it

    refused = cli(stack, "admin", "move-project", "nope", slug, "--dry-run")
    assert refused.returncode == 1 and "project_id" in refused.stderr
    bad = cli(stack, "admin", "move-project", "p", slug, "--on-conflict", "overwrite")
    assert bad.returncode == 2 and "on_conflict" in bad.stderr


def test_project_repository_pipeline_follow_and_patch(stack: ProcessStack, tmp_path: Path) -> None:
    repo = planted_repo(tmp_path)
    project = cli(stack, "project", "create", f"cli-{uuid.uuid4().hex[:6]}").stdout.split()[-1]
    added = cli(stack, "project", "add-repo", project, "acme", "shop", str(repo))
    assert added.returncode == 0, added.stderr
    repository = added.stdout.split()[-1]
    params = json.dumps({"replies": model_replies(), "tokens": 3})
    started = cli(stack, "pipeline", "start", repository, "auto-fix", "--params", params, "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    assert run["phase"] == "scanning"

    followed = cli(stack, "run", "follow", run["id"])
    assert followed.returncode == 0, followed.stderr
    assert "improving" in followed.stdout and "reviewing" in followed.stdout
    assert "phase reviewing" in cli(stack, "run", "show", run["id"]).stdout
    patch = cli(stack, "pipeline", "patch", run["id"]).stdout
    assert "+    return a + b" in patch
    steps = json.loads(cli(stack, "run", "show", run["id"], "--json").stdout)["steps"]
    by_kind = {s["spec"]["tool"]: s["id"] for s in steps if s["kind"] == "tool"}
    chosen = cli(stack, "pipeline", "patch", run["id"], "--step", by_kind["review_patches"])
    assert chosen.stdout == patch
    none = cli(stack, "pipeline", "patch", run["id"], "--step", by_kind["scan_repository"])
    assert none.returncode == 1 and "step_id" in none.stderr, none.stderr
    assert cli(stack, "pipeline", "start", repository, "lint").returncode == 2


def test_brackets_in_names_and_errors_are_printed_as_they_are(
    stack: ProcessStack, tmp_path: Path
) -> None:
    """Rich would read "[/etc/nginx]" as a closing tag (a traceback mid-run) and print
    "[red]x[/red]" as a red x."""
    odd = "[/etc/nginx] is [red]gone[/red]"
    template = tmp_path / "odd.yaml"
    template.write_text(
        json.dumps({"name": f"Deploy {odd}", "steps": [{"name": "a", "params": {"fail": odd}}]})
    )
    created = cli(stack, "workflow", "create", "-f", str(template), "--json")
    workflow_id = json.loads(created.stdout)["id"]
    followed = cli(stack, "run", "start", workflow_id, "--follow")
    assert followed.returncode == 3 and "Traceback" not in followed.stderr  # failed
    assert odd in followed.stdout and "run failed" in followed.stdout, followed.stdout
    (run,) = json.loads(cli(stack, "run", "list", "--workflow", workflow_id, "--json").stdout)
    for command in (["run", "show", run["id"]], ["workflow", "show", workflow_id]):
        shown = subprocess.run(
            [sys.executable, "-m", "nyxflow.cli.main", *command],
            env={**cli_env(stack), "COLUMNS": "300"},  # a table cell on one line
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0 and odd in shown.stdout, (shown.stdout, shown.stderr)
    assert f"Deploy {odd}" in shown.stdout


@pytest.mark.parametrize("how", ["start --follow", "follow a pending run"])
async def test_following_goes_on_when_the_engine_drains(
    http: httpx.AsyncClient, stack: ProcessStack, how: str
) -> None:
    """The engine the CLI started the run on drains (SIGTERM) and hands the run over: its
    Execute stream ends without a terminal event. The CLI goes on through runs' WatchRun to
    the run's completion on the other engine, printing each event once, and exits 0."""
    stack.add_replica("engine2", "engine", NYXFLOW_ENGINE_LISTEN=f"127.0.0.1:{free_port()}")
    stack.start("engine2")
    try:
        slow = [{"name": n, "params": {"tokens": 60, "token_delay_ms": 50}} for n in "ab"]
        workflow = await create_workflow(http, stack, "drained", slow, on_orphan="resume")
        if how == "start --follow":
            args = ["run", "start", workflow["id"], "--follow", "--json"]
        else:
            args = ["run", "follow", await start_run(http, stack, workflow["id"]), "--json"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nyxflow.cli.main",
            *args,
            env=cli_env(stack),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        printed: list[dict[str, Any]] = []
        while not printed or printed[-1]["type"] != ev.STEP_DELTA:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the CLI ended before the step's first tokens"
            printed.append(json.loads(line))
        stack.signal("engine", signal.SIGTERM)  # it hands the run over to engine2
        out, errout = await asyncio.wait_for(proc.communicate(), 60)
        printed += [json.loads(line) for line in out.decode().splitlines()]
        types = [e["type"] for e in printed]
        assert proc.returncode == 0, (proc.returncode, errout.decode(), types)
        assert ev.RUN_REQUEUED in types and types[-1] == ev.RUN_COMPLETED, types
        assert types.count(ev.RUN_STARTED) == 2, types  # once per engine
        seqs = [e["seq"] for e in printed]
        assert seqs == list(range(1, len(seqs) + 1)), seqs  # each once, none missed
    finally:
        stack.restart("engine")
        stack.kill("engine2")


async def test_starting_without_following_gives_up_on_a_frozen_engine(
    http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """`run start` without --follow waits for the engine's first event. An engine that
    accepts the call and says nothing (frozen) is given up after NYXFLOW_EXECUTE_SILENCE_S,
    with the run's state and how to start it, rather than waited on for ever."""
    workflow = await create_workflow(http, stack, "start-frozen", [{"name": "a"}])
    stack.signal("engine", signal.SIGSTOP)
    try:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "nyxflow.cli.main", "run", "start", workflow["id"]],
            env={**cli_env(stack), "NYXFLOW_EXECUTE_SILENCE_S": "2"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, errout = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("`run start` still waits on the frozen engine") from None
        listed = await http.get(
            "/v1/runs", params={"workflow_id": workflow["id"]}, headers=stack.headers
        )
        (run,) = listed.json()["runs"]
    finally:
        stack.signal("engine", signal.SIGCONT)
    assert proc.returncode == 1, (out.decode(), errout.decode())
    said = " ".join(errout.decode().split())
    assert f"run {run['id']} is still pending" in said, said
    assert f"nyxflow run follow {run['id']}" in said, said
    assert run["status"] == ev.PENDING


@pytest.mark.parametrize("on_orphan", [ev.ON_ORPHAN_RESUME, ev.ON_ORPHAN_FAIL])
async def test_following_leaves_a_frozen_engines_silent_stream_for_watchrun(
    http: httpx.AsyncClient, stack: ProcessStack, on_orphan: str
) -> None:
    """The engine the CLI started the run on freezes (SIGSTOP): its Execute stream stays open
    and silent until gRPC's keepalive gives up (half a minute and more), while the run's lease
    expires and it is swept: taken over by another engine (`on_orphan: resume`) or failed as
    orphaned. After NYXFLOW_EXECUTE_SILENCE_S of silence the CLI goes on through runs'
    WatchRun, and reaches the run's end moments after it happens, each event printed once."""
    if on_orphan == ev.ON_ORPHAN_RESUME:
        stack.add_replica("engine2", "engine", NYXFLOW_ENGINE_LISTEN=f"127.0.0.1:{free_port()}")
        stack.start("engine2")
    try:
        slow = [{"name": n, "params": {"tokens": 40, "token_delay_ms": 50}} for n in "ab"]
        workflow = await create_workflow(http, stack, "frozen", slow, on_orphan=on_orphan)
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "nyxflow.cli.main"],
            *["run", "start", workflow["id"], "--follow", "--json"],
            env={**cli_env(stack), "NYXFLOW_EXECUTE_SILENCE_S": "2"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        printed: list[dict[str, Any]] = []
        try:
            while not printed or printed[-1]["type"] != ev.STEP_DELTA:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line, "the CLI ended before the step's first tokens"
                printed.append(json.loads(line))
            listed = await http.get(
                "/v1/runs", params={"workflow_id": workflow["id"]}, headers=stack.headers
            )
            run_id = listed.json()["runs"][0]["id"]
            stack.signal("engine", signal.SIGSTOP)
            try:
                done = await eventually(
                    lambda: get_run(http, stack, run_id),
                    lambda r: r["status"] in ev.FINISHED_RUN_STATUSES,
                    timeout_s=30,
                    what="the frozen engine's run swept and finished",
                )
                finished_at = time.monotonic()
                # gRPC's keepalive would give the silent stream up 10 to 30 s after the freeze
                try:
                    out, errout = await asyncio.wait_for(proc.communicate(), 10)
                except TimeoutError:
                    raise AssertionError("the CLI still waits on the silent stream") from None
                late = time.monotonic() - finished_at
            finally:
                stack.signal("engine", signal.SIGCONT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        printed += [json.loads(line) for line in out.decode().splitlines()]
        types = [e["type"] for e in printed]
        assert late < 5, f"the CLI heard of the end {late:.1f} s late"
        seqs = [e["seq"] for e in printed]
        assert seqs == list(range(1, len(seqs) + 1)), seqs  # each once, none missed
        if on_orphan == ev.ON_ORPHAN_RESUME:
            assert done["status"] == ev.COMPLETED, done
            assert proc.returncode == 0, (proc.returncode, errout.decode(), types)
            assert ev.RUN_REQUEUED in types and types[-1] == ev.RUN_COMPLETED, types
            assert types.count(ev.RUN_STARTED) == 2, types  # once per engine
        else:
            assert (done["status"], done["error"]) == (ev.FAILED, ev.ORPHAN_ERROR), done
            assert proc.returncode == 3, (proc.returncode, errout.decode(), types)
            assert types[-1] == ev.RUN_FAILED and printed[-1]["error"] == ev.ORPHAN_ERROR, types
        assert "detached" not in errout.decode()
    finally:
        stack.restart("engine")
        if on_orphan == ev.ON_ORPHAN_RESUME:
            stack.kill("engine2")
