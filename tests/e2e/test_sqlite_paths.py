"""A SQLite path that cannot be used is refused at once, in one line naming
NYXFLOW_DATABASE_URL: a folder that could not be made was an OSError's traceback, and a file
that could not be opened was waited for NYXFLOW_DATABASE_WAIT_S (60 s), logging "waiting for
the database", though nothing brings a local file up later."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_startup import refusal


def _file_in_the_way(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("")  # a typo'd path
    return tmp_path / "a-file" / "nyxflow.db"


def _folder_where_the_file_goes(tmp_path: Path) -> Path:
    (tmp_path / "nyxflow.db").mkdir()
    return tmp_path / "nyxflow.db"


def _not_a_database(tmp_path: Path) -> Path:
    (tmp_path / "nyxflow.db").write_text("notes, not a database " * 100)
    return tmp_path / "nyxflow.db"


# A place no one may write, even root (these tests may run as root, whom modes do not stop).
def _folder_no_one_may_make(_tmp_path: Path) -> Path:
    return Path("/proc/nyxflow/nyxflow.db")


def _file_no_one_may_make(_tmp_path: Path) -> Path:
    return Path("/proc/nyxflow.db")


@pytest.mark.parametrize("command", [["nyxflow_runs"], ["nyxflow_runs", "migrate"]])
@pytest.mark.parametrize(
    "place,reason",
    [
        (_file_in_the_way, "cannot make the SQLite file's folder"),
        (_folder_no_one_may_make, "cannot make the SQLite file's folder"),
        (_folder_where_the_file_goes, "cannot open the SQLite file"),
        (_file_no_one_may_make, "cannot open the SQLite file"),
        (_not_a_database, "cannot open the SQLite file"),
    ],
)
def test_a_sqlite_path_that_cannot_be_used_is_refused_at_once_in_one_line(
    tmp_path: Path, command: list[str], place: Callable[[Path], Path], reason: str
) -> None:
    path = place(tmp_path)
    started = time.monotonic()
    stderr = refusal(
        tmp_path,
        command,
        NYXFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{path}",
        NYXFLOW_DATABASE_WAIT_S="20",
    )
    assert time.monotonic() - started < 10, stderr[-1000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("nyxflow runs: NYXFLOW_DATABASE_URL: " + reason), stderr[-1000:]
    assert "waiting for the database" not in stderr
