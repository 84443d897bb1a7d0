"""The review's scratch folders (tools/scratch.py): an engine killed mid-review leaves its
clone behind; the next engine on the machine removes it, and never a live engine's."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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
