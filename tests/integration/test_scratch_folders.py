"""The review's scratch folders (tools/scratch.py): an engine killed mid-review leaves its
clone behind; the next engine on the machine removes it, and never a live engine's."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nyxflow.errors import FailedPrecondition
from nyxflow_engine.tools import scratch
from tests.support.databases import fresh_database
from tests.support.inprocess import engine_service, runs_service


def test_the_folders_of_engines_gone_are_removed_and_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = _dead_pid()
    left = tmp_path / f"{scratch.PREFIX}{gone}-abc"
    (left / "repo").mkdir(parents=True)
    (left / "repo" / "big.bin").write_bytes(b"x" * 1000)
    mine = scratch.make()
    unrelated = tmp_path / f"{scratch.PREFIX}notapid"
    unrelated.mkdir()

    assert mine.name.startswith(f"{scratch.PREFIX}{os.getpid()}-")
    assert mine.parent == scratch.root() == tmp_path / "nyxflow-scratch"
    also_gone = scratch.root() / f"{scratch.PREFIX}{gone}-def"  # where engines make them now
    also_gone.mkdir()
    assert scratch.sweep_left_behind() == 2
    assert not also_gone.exists()
    assert not left.exists() and mine.is_dir() and unrelated.is_dir()
    scratch.remove(mine)
    assert not mine.exists()


async def test_an_engine_starting_sweeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    left = tmp_path / "tmp" / f"{scratch.PREFIX}{_dead_pid()}-x"
    left.mkdir()
    async with (
        fresh_database("sqlite", tmp_path) as url,
        runs_service(url) as runs_settings,
        engine_service(runs_settings.runs_listen),
    ):
        assert not left.exists()


def _dead_pid() -> str:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def _planted(tmp_path: Path, kind: str) -> Path:
    """`nyxflow-scratch` in the temp folder as someone else left it before the engine came."""
    folder = tmp_path / "nyxflow-scratch"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
    elif kind == "world-writable":
        folder.mkdir()
        folder.chmod(0o1777)  # as /tmp itself: anyone may add to it
    elif kind == "readable":
        folder.mkdir()
        folder.chmod(0o755)  # anyone may read the clones in it
    else:
        folder.mkdir(mode=0o700)  # the engine is made another user below: no root needed
    return folder


@pytest.mark.parametrize("kind", ["symlink", "world-writable", "readable", "another user's"])
def test_a_scratch_folder_not_the_engine_s_own_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The folder was taken as it was found (mkdir exist_ok): another user who made it first
    could read every tenant's clone in it, or change one between its tests and its patch."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = _planted(tmp_path, kind)
    if kind == "another user's":  # the folder's owner is not the engine's user
        engine_uid = os.getuid() + 1
        monkeypatch.setattr(os, "getuid", lambda: engine_uid)

    with pytest.raises(FailedPrecondition, match=f"the scratch folder {folder} ") as refused:
        scratch.make()

    assert "mode 0700" in str(refused.value)
    assert list((tmp_path / "elsewhere").iterdir() if kind == "symlink" else []) == []


def test_a_scratch_folder_made_in_a_setgid_temp_folder_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made in a setgid folder, it is mode 2700: private all the same, and it was refused as
    made, every time ("remove it" could not help)."""
    tmp_path.chmod(0o2755)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    made = scratch.make()

    assert stat.S_IMODE(made.parent.stat().st_mode) == 0o2700


def test_a_refused_scratch_folder_refuses_reviews_not_the_engines_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep at start-up raised the refusal, and every engine exited, those that never
    review (sandbox `none`) included; it sweeps what it may and says why it did not."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _planted(tmp_path, "world-writable")
    left = tmp_path / f"{scratch.PREFIX}{_dead_pid()}-x"  # where an earlier version made one
    left.mkdir()

    assert scratch.sweep_left_behind() == 1

    assert not left.exists()
    with pytest.raises(FailedPrecondition):
        scratch.make()


def test_a_symlink_named_as_a_dead_engine_s_folder_is_not_swept_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone may name a symlink `nyxflow-review-<dead pid>-x` in the temp folder: the sweep
    made what it leads to writable, then removed it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    target = tmp_path / "someone's"
    (target / "kept").mkdir(parents=True)
    (target / "kept").chmod(0o500)
    (tmp_path / f"{scratch.PREFIX}{_dead_pid()}-x").symlink_to(target)

    assert scratch.sweep_left_behind() == 0

    assert (target / "kept").is_dir() and stat.S_IMODE((target / "kept").stat().st_mode) == 0o500
    (target / "kept").chmod(0o700)
