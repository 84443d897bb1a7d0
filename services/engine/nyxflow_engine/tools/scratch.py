"""The review's scratch folders: named for the engine process that made them, so that an
engine starting on the same machine removes those whose maker died (a SIGKILL, a crash)
before it could, and leaves a live engine's alone."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "nyxflow-review-"


def make() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def sweep_left_behind() -> int:
    """Remove the scratch folders of engines no longer running; how many were removed."""
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = folder.name.removeprefix(PREFIX).split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            remove(folder)
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
