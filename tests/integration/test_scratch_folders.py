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

    assert mine.name.startswith(f"{scratch.PREFIX}{scratch.tag()}-")
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


# A container's engine: PID 1 of a PID namespace with a /proc of its own, its temp folder kept
# from one start to the next (a restart keeps the container's /tmp).
IN_A_CONTAINER = ("unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc")
KILLED_MID_REVIEW = """
import os
from nyxflow_engine.tools import scratch
assert os.getpid() == 1
print(scratch.make())
os._exit(0)  # as a SIGKILL leaves it: the folder not removed (PID 1 ignores its own kill)
"""
STARTING = """
import os
from nyxflow_engine.tools import scratch
assert os.getpid() == 1
print(scratch.sweep_left_behind())
"""


def _in_a_container(tmp_path: Path, code: str) -> str:
    done = subprocess.run(
        [*IN_A_CONTAINER, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_engine_restarted_with_the_same_pid_removes_the_killed_one_s_folder(
    tmp_path: Path,
) -> None:
    """The restarted engine is PID 1 again: the killed one's clone was kept as its own, and
    every restart mid-review left another full clone of a tenant's code for ever."""
    left = Path(_in_a_container(tmp_path, KILLED_MID_REVIEW))
    assert left.is_dir() and left.parent == tmp_path / "nyxflow-scratch"

    assert _in_a_container(tmp_path, STARTING) == "1"

    assert not left.exists()


def test_a_live_pid_keeps_only_the_folders_its_own_process_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder names its maker by pid, start and boot: another process that now holds the
    pid did not make it. An earlier version's name (the pid alone) of this very process is an
    engine's before it (this version names none so); of another live process it is kept, as
    that may be an earlier version's engine still reviewing."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tell = "from nyxflow_engine.tools import scratch; print(scratch.tag(), flush=True); input()"
    other = subprocess.Popen(
        [sys.executable, "-c", tell], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        its_tag = other.stdout.readline().strip()
        pid, start, boot = its_tag.split(".")
        assert pid == str(other.pid) and start.isdigit() and boot
        root = scratch.root()
        kept = [root / f"{scratch.PREFIX}{its_tag}-a", root / f"{scratch.PREFIX}{pid}-b"]
        removed = [
            root / f"{scratch.PREFIX}{pid}.{int(start) - 1}.{boot}-c",  # an earlier holder
            root / f"{scratch.PREFIX}{pid}.{start}.00000000-d",  # the same tick, another boot
            root / f"{scratch.PREFIX}{os.getpid()}-e",  # this pid, an earlier version's name
        ]
        for folder in [*kept, *removed]:
            folder.mkdir()
        mine = scratch.make()

        assert scratch.sweep_left_behind() == len(removed)

        assert [folder.is_dir() for folder in [*kept, mine]] == [True] * 3
        assert [folder.exists() for folder in removed] == [False] * 3
    finally:
        other.kill()
        other.wait()


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
