"""The review's scratch folders: named for the engine process that made them, so that an
engine starting on the same machine removes those whose maker died (a SIGKILL, a crash)
before it could, and leaves a live engine's alone."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "nyxflow-review-"


def root() -> Path:
    """Where every review's scratch folder is, and nothing else: a test command's walls hide
    this folder (sandbox.Walls), so no other run's clone is in its sight. Not the whole temp
    folder: a suite's own tools may live there (a virtualenv made under /tmp)."""
    folder = Path(tempfile.gettempdir()) / "nyxflow-scratch"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def make() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root()))


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
    # In the temp folder itself too: where an engine of an earlier version made them.
    found = [*root().glob(f"{PREFIX}*"), *Path(tempfile.gettempdir()).glob(f"{PREFIX}*")]
    for folder in found:
        pid = folder.name.removeprefix(PREFIX).split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)) and remove(folder):
            removed += 1
    if removed:
        log.info("removed scratch folders of engines gone", extra={"count": removed})
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True
