"""The review's scratch folder, and the clone in it, after a test run that left read-only
folders (Go's module cache in its HOME, Bazel's output): removed all the same, and the diff
judged by its tests alone. Run as the engine's image runs it, without the capability to
ignore file modes (root has it: under `setpriv`, without it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from nyxflow_engine.tools import scratch
from tests.support.repos import GOOD_DIFF, TEST_COMMAND, planted_repo

# Dropped from the bounding set, they are gone from what root's next program holds.
WITHOUT_OVERRIDE = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")

REVIEW = """
import asyncio, json, os, sys, tempfile
from pathlib import Path
from nyxflow_engine.tools import scratch
from nyxflow_engine.tools.patches import review_patches
from nyxflow_engine.tools.registry import ToolCall

async def ignore(_a, _f):
    return None

call = ToolCall({"path": sys.argv[1], "test_command": sys.argv[2]}, sys.argv[3], ignore)
report = json.loads(asyncio.run(review_patches(call)))
mine = scratch.root().glob(f"{scratch.PREFIX}{scratch.tag()}-*")
print(json.dumps({"report": report, "left": [str(folder) for folder in mine]}))
"""

SWEEP = """
from nyxflow_engine.tools import scratch
print(scratch.sweep_left_behind())
"""


def _as_the_engine(*args: str) -> str:
    prefix = WITHOUT_OVERRIDE if os.geteuid() == 0 else ()
    done = subprocess.run(
        [*prefix, sys.executable, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _review(repo: Path, command: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(_as_the_engine("-c", REVIEW, str(repo), command, GOOD_DIFF))
    for folder in found["left"]:
        _force_remove(Path(folder))
    return found


def _force_remove(folder: Path) -> None:
    subprocess.run(["chmod", "-R", "u+w", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def test_the_scratch_folder_goes_even_with_read_only_folders_in_the_home(tmp_path: Path) -> None:
    repo = planted_repo(tmp_path)
    cache = "$HOME/go/pkg/mod/x"
    command = (
        f"sh -c 'mkdir -p {cache} && echo 1 > {cache}/f && chmod 555 {cache} && {TEST_COMMAND}'"
    )

    found = _review(repo, command)

    assert [a["files"] for a in found["report"]["accepted"]] == [["calc.py"]], found
    assert found["left"] == []


def test_a_read_only_folder_left_in_the_clone_fails_nothing(tmp_path: Path) -> None:
    """`git clean` could not empty it: the whole step failed, every accepted diff lost."""
    repo = planted_repo(tmp_path)
    command = f"sh -c 'mkdir -p ro && echo 1 > ro/f && chmod 555 ro && {TEST_COMMAND}'"

    found = _review(repo, command)

    assert [a["files"] for a in found["report"]["accepted"]] == [["calc.py"]], found
    assert found["left"] == []


def test_the_sweep_removes_a_dead_engine_s_read_only_folders() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid belongs to no engine any more
    folder = Path(tempfile.mkdtemp(prefix=f"{scratch.PREFIX}{dead.pid}-", dir=scratch.root()))
    cache = folder / "home" / "go" / "pkg" / "mod" / "x"
    cache.mkdir(parents=True)
    (cache / "f").write_text("1")
    cache.chmod(0o555)
    try:
        removed = int(_as_the_engine("-c", SWEEP))
        assert not folder.exists() and removed >= 1
    finally:
        _force_remove(folder)
