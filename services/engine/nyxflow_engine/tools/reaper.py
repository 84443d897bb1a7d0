"""The keeper of a tenant's command: `python reaper.py ENGINE_PID PROGRAM ARGS...`, started by
the engine (whose pid it is given: an engine that died while this process was starting must
not be mistaken for its parent).

A process group is not a cage: a test suite's server that calls setsid(), or daemonizes by
double fork, leaves the group, and killing the group leaves it running for ever. This process
is a child subreaper (Linux): whatever the command starts and orphans is reparented here,
never beyond, so it can always be found (as a child of this process) and killed. Everything
goes when the command exits, when the engine asks (SIGTERM: a timeout, a cancelled run), or
when the engine itself is gone (this process then has another parent).

The exit status is the command's: its code, or 128 + the signal that killed it, as a shell
reports it. A program that cannot be started exits 127 with the reason on stderr.

Run with `-I -S` and nothing but the standard library: it starts for every test command.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PARENT_CHECK_S = 0.5  # how soon the engine's death is noticed
WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
STOPPED = 128 + signal.SIGTERM


def become_subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def reap() -> dict[int, int]:
    """Every exited child, collected now: pid -> wait status."""
    statuses: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return statuses
        if pid == 0:
            return statuses
        statuses[pid] = status


def kill_all() -> None:
    """Kill every descendant. A killed child's own children become ours as it dies, so the
    round repeats until none is left."""
    me = os.getpid()
    while True:
        reap()
        left = children(me)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def start(args: list[str]) -> int:
    pid = os.fork()
    if pid == 0:  # the command: the signals this process waits on are its own again
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            os.execvp(args[0], args)
        except OSError as error:
            print(f"cannot run {args[0]}: {error.strerror or error}", file=sys.stderr)
        os._exit(127)
    return pid


def exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def main(args: list[str]) -> int:
    if len(args) < 2 or not args[0].isdigit():
        print("usage: reaper.py ENGINE_PID PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    parent, args = int(args[0]), args[1:]
    become_subreaper()  # if refused, the engine's group kill is still there
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    if os.getppid() != parent:
        return STOPPED  # the engine died as this process started: nothing is run
    command = start(args)
    try:
        while True:
            received = signal.sigtimedwait(WATCHED, PARENT_CHECK_S)
            if received is not None and received.si_signo != signal.SIGCHLD:
                return STOPPED
            if os.getppid() != parent:
                return STOPPED  # the engine is gone: nobody will read the outcome
            status = reap().get(command)
            if status is not None:
                return exit_code(status)
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
