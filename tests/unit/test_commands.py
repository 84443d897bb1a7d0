"""The engine's child processes (git, a pipeline's test command): a clean environment, and
nothing they start outlives them, on a timeout, on cancellation, or after a normal exit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from nyxflow_engine.tools import commands, sandbox
from nyxflow_engine.tools.commands import run
from nyxflow_engine.tools.sandbox import Sandbox
from tests.support.eventually import eventually


def _running(marker: str) -> list[int]:
    """Pids of processes whose command line holds `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in cmdline and state != "Z":
                pids.append(int(proc.name))
    return pids


def _sleeper(marker: str) -> str:
    """A shell line that leaves a long sleeper in the background, holding the output open."""
    return f'"{sys.executable}" -c "import time; time.sleep(60)" {marker} &'


async def test_the_engine_s_secrets_stay_out_of_a_child_s_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NYXFLOW_INTERNAL_SECRET", "s3cret-internal")
    monkeypatch.setenv("NYXFLOW_ANTHROPIC_API_KEY", "sk-ant-leak")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-leak")
    home = tmp_path / "home"
    home.mkdir()

    done = await run(tmp_path, "env", home=home)

    assert done.code == 0
    assert "s3cret-internal" not in done.output and "leak" not in done.output
    variables = dict(line.split("=", 1) for line in done.output.splitlines() if "=" in line)
    assert variables["HOME"] == str(home)
    assert variables["PATH"]  # commands are still found


async def test_a_timeout_kills_what_the_command_started(tmp_path: Path) -> None:
    marker = f"nyxflow-test-{uuid.uuid4().hex}"
    done = await run(tmp_path, "sh", "-c", f"{_sleeper(marker)} sleep 60", timeout_s=0.5)

    assert done.code == -1 and done.output.startswith("timed out")
    await eventually(lambda: asyncio.to_thread(_running, marker), lambda pids: not pids)


async def test_what_a_finished_command_left_running_is_killed(tmp_path: Path) -> None:
    """The command exits at once, its background child holding the output pipe: the call
    returns with the command's own exit code, not at the timeout, and the child is gone."""
    marker = f"nyxflow-test-{uuid.uuid4().hex}"
    loop = asyncio.get_running_loop()
    started = loop.time()

    done = await run(tmp_path, "sh", "-c", f"{_sleeper(marker)} echo ok; exit 3", timeout_s=30)

    assert (done.code, done.output.strip()) == (3, "ok")
    assert loop.time() - started < 10, "waited on the background child's pipe"
    await eventually(lambda: asyncio.to_thread(_running, marker), lambda pids: not pids)


async def test_a_cancelled_run_kills_the_command(tmp_path: Path) -> None:
    marker = f"nyxflow-test-{uuid.uuid4().hex}"
    task = asyncio.create_task(
        run(tmp_path, "sh", "-c", f"{_sleeper(marker)} sleep 60", timeout_s=60)
    )
    await eventually(lambda: asyncio.to_thread(_running, marker), lambda pids: bool(pids))

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await eventually(lambda: asyncio.to_thread(_running, marker), lambda pids: not pids)


async def test_a_program_that_does_not_exist_is_an_outcome_not_a_crash(tmp_path: Path) -> None:
    done = await run(tmp_path, "no-such-program-anywhere", "--flag")
    assert done.code == 127 and "cannot run no-such-program-anywhere" in done.output


async def test_input_is_given_and_stderr_kept_apart_when_asked(tmp_path: Path) -> None:
    script = (
        "import sys; data = sys.stdin.read(); print(data.upper()); print('oops', file=sys.stderr)"
    )
    done = await run(tmp_path, sys.executable, "-c", script, stdin=b"diff", merge_stderr=False)
    assert (done.code, done.output.strip(), done.errors.strip()) == (0, "DIFF", "oops")


def _escaper(marker: str) -> str:
    """A shell line that leaves a sleeper outside the command's process group and session:
    a subshell starts it and exits at once (a daemon's double fork), and it calls setsid()."""
    code = "import os, time; os.setsid(); time.sleep(60)"
    return f'( "{sys.executable}" -c "{code}" {marker} & )'


SANDBOXES = pytest.mark.parametrize("namespaces", [True, False], ids=["sandboxed", "unsandboxed"])


@SANDBOXES
@pytest.mark.parametrize(
    ("rest", "timeout_s", "code", "output"),
    [
        ("sleep 0.3; echo ok; exit 4", 30.0, 4, "ok"),  # it ends, its own exit code kept
        ("sleep 60", 1.0, -1, "timed out after 1 s"),
    ],
    ids=["ends", "times-out"],
)
async def test_what_a_contained_command_lets_escape_its_group_is_killed_with_it(
    tmp_path: Path, rest: str, timeout_s: float, code: int, output: str, namespaces: bool
) -> None:
    marker = f"nyxflow-test-{uuid.uuid4().hex}"
    line = f"{_escaper(marker)}; {rest}"

    done = await run(
        tmp_path,
        "sh",
        "-c",
        line,
        timeout_s=timeout_s,
        contained=True,
        sandbox=Sandbox(namespaces=namespaces),
    )

    assert (done.code, done.output.strip()) == (code, output)
    await eventually(lambda: asyncio.to_thread(_running, marker), lambda pids: not pids)


@SANDBOXES
async def test_a_contained_command_dies_with_the_engine(tmp_path: Path, namespaces: bool) -> None:
    """The engine is SIGKILLed mid-command: nothing is left to kill the command's group, so
    the keeper notices the engine is gone and kills the command and all it started."""
    marker = f"nyxflow-test-{uuid.uuid4().hex}"
    line = f"{_escaper(marker)}; sleep 60 # {marker}"
    engine = (
        "import asyncio, sys; from pathlib import Path; "
        "from nyxflow_engine.tools.commands import run; "
        "from nyxflow_engine.tools.sandbox import Sandbox; "
        "sandbox = Sandbox(namespaces=sys.argv[3] == 'True'); "
        "asyncio.run(run(Path(sys.argv[1]), 'sh', '-c', sys.argv[2], contained=True, "
        "sandbox=sandbox))"
    )
    stand_in = await asyncio.create_subprocess_exec(
        sys.executable, "-c", engine, tmp_path, line, str(namespaces)
    )
    try:
        # The stand-in, the keeper, the command's shell and the escaped sleeper (all four
        # carry the marker): the command is under way when the engine dies.
        await eventually(lambda: asyncio.to_thread(_running, marker), lambda p: len(p) >= 4)
    finally:
        stand_in.kill()
        await stand_in.wait()
    await eventually(lambda: asyncio.to_thread(_running, marker), lambda pids: not pids)


async def test_a_contained_command_keeps_its_exit_status_and_reasons(tmp_path: Path) -> None:
    killed = await run(tmp_path, "sh", "-c", "kill -9 $$", contained=True)
    missing = await run(tmp_path, "no-such-program-anywhere", contained=True)

    assert killed.code == 128 + 9  # as a shell reports a signal
    assert missing.code == 127 and "cannot run no-such-program-anywhere" in missing.output


@pytest.mark.parametrize("handed", ["hung-up", "not-open"])
async def test_a_keeper_whose_engine_died_as_it_started_runs_nothing(
    tmp_path: Path, handed: str
) -> None:
    """The engine's line it is handed has hung up (or is no open descriptor): the engine is
    gone, so it exits, the command never run."""
    marker = tmp_path / "ran"
    reaper = Path(sandbox.__file__).with_name("reaper.py")
    line, engine_end = os.pipe()
    os.close(engine_end)  # the engine died
    try:
        fd = line if handed == "hung-up" else line + 1000
        keeper = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(reaper), str(fd), "touch", str(marker), pass_fds=[line]
        )
        assert await asyncio.wait_for(keeper.wait(), 10) == 128 + signal.SIGTERM
    finally:
        os.close(line)
    assert not marker.exists()


async def test_a_contained_command_s_endless_output_is_read_from_its_end(tmp_path: Path) -> None:
    """A test suite printing without end: its last part is kept (it says why it failed), and
    the engine never reads gigabytes into memory. The engine's own git output is read whole."""
    script = "import sys; sys.stdout.write('x' * 3_000_000 + '\\nlast words\\n'); sys.exit(3)"
    done = await run(tmp_path, sys.executable, "-c", script, contained=True)

    assert done.code == 3
    assert done.output.endswith("x\nlast words\n")
    assert done.output.startswith(f"[{3_000_012 - commands.COMMAND_OUTPUT_BYTES} bytes before]\n")
    assert len(done.output) < commands.COMMAND_OUTPUT_BYTES + 100
    whole = await run(tmp_path, sys.executable, "-c", script)
    assert len(whole.output) == 3_000_012


async def test_a_timed_out_command_s_output_ends_with_the_timeout(tmp_path: Path) -> None:
    """A timed-out command's output was thrown away, its message only "timed out after N s":
    what it printed until then says where it hung. Kept as for a command that ended (a
    contained one's last COMMAND_OUTPUT_BYTES); file contents (`binary`) give none."""
    script = (
        "import sys, time; sys.stdout.write('x' * 3_000_000 + '\\ntest_pay RUNNING\\n'); "
        "sys.stdout.flush(); time.sleep(60)"
    )
    # 4 s: the interpreter starts and prints in time even on a loaded machine.
    done = await run(tmp_path, sys.executable, "-c", script, contained=True, timeout_s=4)

    assert done.code == -1
    assert done.output.endswith("x\ntest_pay RUNNING\ntimed out after 4 s"), done.output[-200:]
    assert done.output.startswith(f"[{3_000_018 - commands.COMMAND_OUTPUT_BYTES} bytes before]\n")
    quiet = await run(tmp_path, "sleep", "60", timeout_s=0.5)
    assert (quiet.code, quiet.output) == (-1, "timed out after 0 s")
    read = await run(tmp_path, "sh", "-c", "echo partial; sleep 60", timeout_s=0.5, binary=True)
    assert (read.code, read.output, read.data) == (-1, "timed out after 0 s", b"")
