"""The keeper of a tenant's command:
`python reaper.py [--limit=NAME:BYTES]... [--sandboxed] ENGINE_FD PROGRAM ARGS...`,
started by the engine, which hands it ENGINE_FD, the read end of a pipe whose write end only
the engine holds: it hangs up when the engine dies, whatever pid the keeper sees the engine
under (none, in a PID namespace of its own), and an engine that died while this process was
starting is never mistaken for a live one.

A process group is not a cage: a test suite's server that calls setsid(), or daemonizes by
double fork, leaves the group, and killing the group leaves it running for ever. This process
is a child subreaper (Linux): whatever the command starts and orphans is reparented here,
never beyond, so it can always be found (as a child of this process) and killed. Everything
goes when the command exits, when the engine asks (SIGTERM: a timeout, a cancelled run), or
when the engine itself is gone.

`--sandboxed`: this process is the init of the command's namespaces (sandbox.py). It brings
up the loopback of a network namespace of its own, and the command starts with no capability
at all (none can be regained through a setuid program either), so it cannot undo its sandbox:
unmount its /proc to find the host's below, take its loopback down.

`--limit=data:BYTES`, `--limit=fsize:BYTES`: resource limits the command (and all it starts)
runs under; a core dump is never written (a crashing suite would fill the disk with them).

`--tmpfs=BYTES:PATH`, `--bind=rw|ro:PATH` (sandboxed only): the command's walls (sandbox.py's
`Walls`), built in its mount namespace before the capabilities go: an empty tmpfs over PATH,
then each PATH shown again as it is outside, writable or read-only. A wall that cannot be
built is an error: the command is not run.

The exit status is the command's: its code, or 128 + the signal that killed it, as a shell
reports it. A program that cannot be started exits 127 with the reason on stderr.

Run with `-I -S` and nothing but the standard library: it starts for every test command.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import resource
import select
import signal
import sys
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
# What a read-only remount in a user namespace must repeat of the mount's flags: the kernel
# locks them (statvfs's flag -> mount's).
LOCKED = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, 8),
    (os.ST_NOATIME, 1024),
    (os.ST_NODIRATIME, 2048),
    (os.ST_RELATIME, 1 << 21),
)
PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 23, 24, 38
CAPABILITY_VERSION_3 = 0x20080522
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"  # struct ifreq: the interface's name, then its flags
ENGINE_CHECK_S = 0.5  # how soon the engine's death is noticed
WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
STOPPED = 128 + signal.SIGTERM
OPTIONS = ("--limit=", "--tmpfs=", "--bind=")


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


LIBC = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> bool:
    return bool(LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def engine_gone(engine: int) -> bool:
    """The engine's pipe hangs up once it has exited (nothing is ever written to it); a
    descriptor not open counts as an engine gone (nothing says it is alive)."""
    poller = select.poll()
    poller.register(engine, select.POLLIN)
    return bool(poller.poll(0))


def loopback_up() -> None:
    """A network namespace of its own starts with its loopback down: a test suite serving
    on 127.0.0.1 needs it up. The host's, when shared, is up already and left alone."""
    # Imported here: an unsandboxed keeper starts without them.
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        asked = struct.pack(IFREQ, b"lo", 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, asked))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def drop_capabilities() -> None:
    """None left, none to gain on exec: the bounding set empties (a root user's program
    would get it back), the sets are cleared (the ambient set with the inheritable), and no
    setuid program or file capability raises them again."""
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    cap = 0
    while LIBC.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0:  # up to the kernel's last one
        _check(LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
        cap += 1
    _check(LIBC.capset(ctypes.byref(CapHeader(CAPABILITY_VERSION_3, 0)), (CapData * 2)()))


def _check(result: int) -> None:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


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


def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        LIBC.mount(
            os.fsencode(source),
            os.fsencode(target),
            os.fsencode(fstype) if fstype else None,
            ctypes.c_ulong(flags),
            os.fsencode(data) if data else None,
        )
    )


def parse_walls(options: list[str]) -> tuple[tuple[int, str] | None, list[tuple[bool, str]]]:
    """`--tmpfs=BYTES:PATH` and `--bind=rw|ro:PATH` options -> the cover, the binds."""
    cover, binds = None, []
    for option in options:
        name, _, value = option.partition("=")
        first, _, path = value.partition(":")
        if name == "--tmpfs":
            cover = (int(first), path)
        elif first in ("rw", "ro") and path:
            binds.append((first == "rw", path))
        else:
            raise ValueError(option)
    return cover, binds


def build_walls(cover: tuple[int, str] | None, binds: list[tuple[bool, str]]) -> None:
    """In this mount namespace (unshare made it private): an empty tmpfs over the cover, then
    each bind, shallowest first, so that a deeper one lands in what a shallower one shows. Each
    is opened before the tmpfs can hide it."""
    held = [(len(Path(path).parts), writable, path) for writable, path in binds]
    opened = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for _, path in binds}
    here = os.getcwd()
    try:
        if cover:
            size, path = cover
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={size}")
        for _, writable, path in sorted(held):
            os.makedirs(path, exist_ok=True)  # below the cover: made in the tmpfs
            mount(f"/proc/self/fd/{opened[path]}", path, None, MS_BIND | MS_REC)
            if not writable:
                kept = sum(flag for locked, flag in LOCKED if os.statvfs(path).f_flag & locked)
                mount("none", path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
    finally:
        for fd in opened.values():
            os.close(fd)
    os.chdir(here)  # the same folder, as the new mounts show it


LIMITS = {"data": resource.RLIMIT_DATA, "fsize": resource.RLIMIT_FSIZE}


def parse_limits(options: list[str]) -> dict[int, int]:
    """`--limit=NAME:BYTES` options -> resource -> bytes."""
    limits = {resource.RLIMIT_CORE: 0}
    for option in options:
        name, _, size = option.removeprefix("--limit=").partition(":")
        limits[LIMITS[name]] = int(size)
    return limits


def set_limits(limits: dict[int, int]) -> None:
    """Soft and hard alike: the command cannot raise them again."""
    for which, size in limits.items():
        hard = resource.getrlimit(which)[1]
        size = size if hard == resource.RLIM_INFINITY else min(size, hard)
        resource.setrlimit(which, (size, size))


def start(args: list[str], sandboxed: bool, limits: dict[int, int]) -> int:
    pid = os.fork()
    if pid == 0:  # the command: the signals this process waits on are its own again
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            set_limits(limits)
            if sandboxed:
                drop_capabilities()
        except OSError as error:
            print(f"cannot sandbox the command: {error.strerror}", file=sys.stderr)
            os._exit(127)
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
    options = list(itertools.takewhile(lambda a: a.startswith(OPTIONS), args))
    args = args[len(options) :]
    sandboxed = args[:1] == ["--sandboxed"]
    args = args[1:] if sandboxed else args
    try:
        limits = parse_limits([o for o in options if o.startswith("--limit=")])
        cover, binds = parse_walls([o for o in options if not o.startswith("--limit=")])
    except (KeyError, ValueError):
        limits, cover, binds = {}, None, []
    if not limits or len(args) < 2 or not args[0].isdigit():
        print(
            "usage: reaper.py [--limit=data|fsize:BYTES]... [--tmpfs=BYTES:PATH]"
            " [--bind=rw|ro:PATH]... [--sandboxed] ENGINE_FD PROGRAM [ARGS...]",
            file=sys.stderr,
        )
        return 2
    engine, args = int(args[0]), args[1:]
    become_subreaper()  # if refused, the engine's group kill is still there
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    if engine_gone(engine):
        return STOPPED  # the engine died as this process started: nothing is run
    os.set_inheritable(engine, False)  # the command's business is not the engine's life
    if sandboxed:
        try:
            loopback_up()
        except OSError as error:
            print(f"cannot bring the loopback up: {error.strerror}", file=sys.stderr)
            return 127
    if cover or binds:
        try:
            build_walls(cover, binds)
        except OSError as error:
            print(f"cannot build the command's walls: {error}", file=sys.stderr)
            return 127
    command = start(args, sandboxed, limits)
    try:
        while True:
            received = signal.sigtimedwait(WATCHED, ENGINE_CHECK_S)
            if received is not None and received.si_signo != signal.SIGCHLD:
                return STOPPED
            if engine_gone(engine):
                return STOPPED  # the engine is gone: nobody will read the outcome
            status = reap().get(command)
            if status is not None:
                return exit_code(status)
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
