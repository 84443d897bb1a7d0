"""The engine's child processes: git, and a pipeline's test command, which is the tenant's
own code.

A child gets a clean environment, not the engine's: the engine's holds the internal secret
(with it, any caller could act as the engine for any tenant) and the providers' API keys,
and a test command's output goes back to the tenant in the review. Each child leads a
process group of its own, and the whole group is killed once the command has ended, on a
timeout, or when the run stops: killing only the direct child would leave what it started (a
test server, a hung test process) running for ever. A tenant's command is also `contained`:
it runs under a keeper (`reaper.py`) that catches what leaves the group (setsid, a daemon's
double fork) and kills it too, and that kills everything if the engine itself dies; and in a
sandbox (`sandbox.py`), where it cannot see the engine's processes nor, by default, reach the
network.

Output goes to a file, not a pipe: a background process that inherited a pipe would hold it
open, and reading it to the end would wait for that process, not for the command. The exit
is polled, not awaited through the event loop's child watcher, so the same code serves on
asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nyxflow_engine.tools.sandbox import SANDBOXED, Sandbox, Walls

# git as the engine runs it on a tenant's repository or scratch clone: whatever their config
# says, it runs no program of theirs. No fsmonitor (run on any read of the index), no hook, no
# git in a nested repository of theirs (submodule.recurse), no transport (a partial clone's
# lazy fetch would run their ssh command or upload-pack), no gpg (log.showSignature). Filters
# and diff drivers are kept out by where the engine reads and writes contents: head.py,
# patches.py.
GIT = (
    "git",
    *("-c", "core.fsmonitor=false"),
    *("-c", "core.hooksPath=/dev/null"),
    *("-c", "submodule.recurse=false"),
    *("-c", "protocol.allow=never"),
    *("-c", "log.showSignature=false"),
)
# What a child keeps of the engine's environment; everything else is left out.
KEPT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Outcome:
    code: int
    output: str  # stdout, with stderr when merged
    errors: str = ""  # stderr, when kept apart
    data: bytes = b""  # stdout undecoded, in place of `output`, when asked for (`binary`)


def clean_environment(home: Path | None = None) -> dict[str, str]:
    """The engine's own tools (git) keep its HOME, for the operator's git settings
    (`safe.directory`, say); a tenant's command is given a `home` of its own."""
    env = {key: os.environ[key] for key in KEPT if key in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env["HOME"] = str(home) if home else os.environ.get("HOME", tempfile.gettempdir())
    env["GIT_TERMINAL_PROMPT"] = "0"  # a clone that wants a password fails, never waits
    return env


POLL_S = (0.001, 0.05)  # the exit is polled from 1 ms, doubling up to 50 ms
COMMAND_OUTPUT_BYTES = 1 << 20  # of a tenant's command's output, the last MiB is read
KEEPER_STOP_S = 5.0  # for the keeper to kill what the command left, before the group is killed


async def run(
    cwd: Path,
    *args: str,
    timeout_s: float = 120.0,
    stdin: bytes = b"",
    merge_stderr: bool = True,
    home: Path | None = None,
    contained: bool = False,
    sandbox: Sandbox = SANDBOXED,
    binary: bool = False,
    walls: Walls | None = None,
    read: Callable[[IO[bytes]], bytes] | None = None,
) -> Outcome:
    """`args` in `cwd`; the exit code -1 if it outlives `timeout_s`, a message ending what
    it printed (none with `binary` or `read`).
    `contained`: under the keeper, in `sandbox` (see the module's docstring), for code not
    the engine's, within `walls` if given. `binary`: stdout as bytes (file contents: a length
    in bytes must stay one); `read`: what of it to keep, read from its file (off the loop),
    so that a large output is never held whole."""
    with (
        _engine_line(contained) as engine,
        tempfile.TemporaryFile() as given,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        if engine is not None:
            args = sandbox.command(engine, args, walls)
        if stdin:
            given.write(stdin)
            given.seek(0)
        # Started off the loop's thread: forking a large process takes a while.
        starting = asyncio.ensure_future(
            asyncio.to_thread(
                subprocess.Popen,
                args,
                cwd=cwd,
                stdin=given if stdin else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if merge_stderr else err,
                env=clean_environment(home),
                start_new_session=True,  # its own process group, killed as one
                pass_fds=() if engine is None else (engine,),
            )
        )
        try:
            process = await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):  # cancelled as it started: it must not live on
                _kill_group(await starting)
            raise
        except OSError as error:  # no such program, or not executable
            message = f"cannot run {args[0]}: {error.strerror or error}"
            return Outcome(127, message, message)
        try:
            ended = await _exited(process, timeout_s)
        finally:
            # The command has ended, or must: whatever it left behind goes with it. In a
            # sandbox the group's SIGKILL reaches the keeper, its PID namespace's init, and the
            # kernel then kills all the namespace holds (unshare ignores SIGTERM, so no asking).
            if contained and not sandbox.namespaces and process.poll() is None:
                _signal(process.pid, signal.SIGTERM)  # the keeper kills all it holds, then exits
                await _exited(process, KEEPER_STOP_S)
            _kill_group(process)
            if process.poll() is None:
                await _exited(process, 5.0)  # killed: reaped at once, but not in this instant
        timed_out = "" if ended else f"timed out after {timeout_s:.0f} s"
        if timed_out and (binary or read is not None):
            return Outcome(-1, timed_out)  # part of a file's contents is none of it
        if binary or read is not None:
            reader = read or _bytes
            data, errors = await asyncio.to_thread(lambda: (reader(_rewound(out)), _text(err)))
            return Outcome(process.returncode or 0, "", errors, data)
        # A tenant's command may print without end: its last part is what explains a failure,
        # and all of it could exhaust the engine's memory (it is on disk until read).
        keep = COMMAND_OUTPUT_BYTES if contained else None
        output, errors = await asyncio.to_thread(lambda: (_text(out, keep), _text(err, keep)))
    if timed_out:  # what it printed until then shows where it hung: the message ends it
        said = f"{output.rstrip()}\n{timed_out}" if output.strip() else timed_out
        return Outcome(-1, said, errors)
    return Outcome(process.returncode or 0, output, errors)


@contextlib.contextmanager
def _engine_line(wanted: bool) -> Iterator[int | None]:
    """The read end of a pipe only the engine holds the write end of, for a keeper: it
    hangs up when the engine exits, whatever pid the keeper sees the engine under (none, in a
    PID namespace). Not a pidfd: a command that got hold of one could signal the engine."""
    if not wanted:
        yield None
        return
    read, write = os.pipe()  # neither inherited but by the keeper (pass_fds)
    try:
        yield read
    finally:
        os.close(read)
        os.close(write)


async def _exited(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay, longest = POLL_S
    while process.poll() is None:
        left = deadline - loop.time()
        if left <= 0:
            return False
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, longest)
    return True


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _rewound(file: IO[bytes]) -> IO[bytes]:
    file.seek(0)
    return file


def _bytes(file: IO[bytes]) -> bytes:
    return file.read()


def _text(file: IO[bytes], keep: int | None = None) -> str:
    """The file's text, or with `keep` its last `keep` bytes after a mark of what was cut."""
    size = file.seek(0, os.SEEK_END)
    if keep is None or size <= keep:
        return _bytes(_rewound(file)).decode(errors="replace")
    file.seek(size - keep)
    return f"[{size - keep} bytes before]\n" + file.read().decode(errors="replace")
