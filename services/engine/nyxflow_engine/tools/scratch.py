"""The review's scratch folders: named for the engine process that made them, so that an
engine starting on the same machine removes those whose maker died (a SIGKILL, a crash)
before it could, and leaves a live engine's alone.

A pid alone does not name a process: an engine in a container is PID 1 each time it starts,
and the container's temp folder outlives a restart, so a killed engine's clones were kept as
the live engine's for ever. A folder is named `<pid>.<start>.<boot>`: the pid, when the
process started (clock ticks since boot, /proc/<pid>/stat field 22) and which boot that was
(after a reboot the restarted engine may start at the same tick)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from nyxflow.errors import FailedPrecondition

log = logging.getLogger(__name__)

PREFIX = "nyxflow-review-"


def root() -> Path:
    """Where every review's scratch folder is, and nothing else: a test command's walls hide
    this folder (sandbox.Walls), so no other run's clone is in its sight. Not the whole temp
    folder: a suite's own tools may live there (a virtualenv made under /tmp).

    The temp folder is everyone's: a folder of that name made by another user (or a symlink
    to one, or one anyone may write) would let them read the tenants' code in the clones,
    change a clone between its review and its patch, or plant a folder the sweep removes
    through. So it must be the engine's own, private, and not a symlink; otherwise refused."""
    folder = Path(tempfile.gettempdir()) / "nyxflow-scratch"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    found = folder.lstat()
    problem = _not_private(found)
    if problem:
        raise FailedPrecondition(
            f"the scratch folder {folder} {problem}: it must be a folder of the engine's user "
            "(uid {uid}), mode 0700; remove it, or set TMPDIR to a folder of the engine's "
            "own".format(uid=os.getuid())
        )
    return folder


def _not_private(found: os.stat_result) -> str:
    """Why a folder is not private to the engine's user, or ""."""
    if stat.S_ISLNK(found.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(found.st_mode):
        return "is not a folder"
    if found.st_uid != os.getuid():
        return f"belongs to another user (uid {found.st_uid})"
    # Private: nobody else may read, write or enter it. Not `== 0o700`: made in a setgid
    # temp folder it is 2700, and was refused as made, every time.
    mode = stat.S_IMODE(found.st_mode)
    if mode & 0o077 or mode & 0o700 != 0o700:
        return f"has mode {mode:04o}"
    return ""


def make() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{tag()}-", dir=root()))


def tag() -> str:
    """This process as its folders' names tell it: `<pid>.<start>.<boot>`."""
    pid = os.getpid()
    return f"{pid}.{_identity(pid)}"


def _identity(pid: int) -> str:
    """What tells the process `pid` from any other that held that pid: `<start>.<boot>`.
    "x" for what /proc does not tell (not Linux): then it is the same for every process, and
    the pid alone decides, as before."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_bytes()
        # After the command's name, which may hold spaces and parentheses: fields 3 on.
        start = stat_line.rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        start = "gone" if os.path.isdir("/proc/self") else "x"
    return f"{start}.{_boot()}"


@functools.cache
def _boot() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8] or "x"
    except OSError:
        return "x"


def remove(folder: Path) -> bool:
    """Whether `folder` is gone. A test run leaves read-only folders (Go's module cache in its
    HOME, Bazel's output): they are made writable and the removal tried again."""
    shutil.rmtree(folder, ignore_errors=True)
    if os.path.lexists(folder):
        make_writable(folder)
        shutil.rmtree(folder, ignore_errors=True)
    gone = not os.path.lexists(folder)
    if not gone:
        log.warning("cannot remove a scratch folder", extra={"folder": str(folder)})
    return gone


def make_writable(folder: Path) -> None:
    """Every folder below `folder` (and it) writable and readable by its owner; symlinks are
    never followed. Top down: a folder is opened only once it may be."""
    _owner_may_change(folder)
    for top, folders, _ in os.walk(folder):
        for name in folders:
            _owner_may_change(Path(top, name))


def _owner_may_change(folder: Path) -> None:
    with contextlib.suppress(OSError):
        if not folder.is_symlink():
            folder.chmod(folder.stat().st_mode | stat.S_IRWXU)


def sweep_left_behind() -> int:
    """Remove the scratch folders of engines no longer running; how many were removed."""
    removed = 0
    try:
        ours = list(root().glob(f"{PREFIX}*"))
    except FailedPrecondition as refused:
        # Reviews are refused with this reason; the engine serves every other step.
        log.warning("scratch folders not swept", extra={"reason": refused.message})
        ours = []
    # In the temp folder itself too: where an engine of an earlier version made them.
    found = [*ours, *Path(tempfile.gettempdir()).glob(f"{PREFIX}*")]
    for folder in found:
        maker = folder.name.removeprefix(PREFIX).split("-", 1)[0]
        # Only the engine's own: in the temp folder anyone may name a symlink so, and the
        # removal would make writable, then remove, what it leads to.
        if _ours(folder) and _gone(maker) and remove(folder):
            removed += 1
    if removed:
        log.info("removed scratch folders of engines gone", extra={"count": removed})
    return removed


def _gone(maker: str) -> bool:
    """Whether the engine a folder's name tells (`tag()`, or the bare pid of an earlier
    version) is no longer running."""
    pid, dot, identity = maker.partition(".")
    if not pid.isdigit():
        return False  # not a name this module gives: left alone
    if not _alive(int(pid)):
        return True
    if not dot:
        # An earlier version's name, its pid alive. In this process: not its maker (this
        # version names no folder so) but an engine before it with the same pid, as after a
        # container's restart. In another: perhaps an earlier version's engine still running
        # beside this one, whose review would fail without its clone: kept until it is gone.
        return int(pid) == os.getpid()
    return identity != _identity(int(pid))


def _ours(folder: Path) -> bool:
    try:
        found = folder.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True
