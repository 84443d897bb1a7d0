"""A repository the tools cannot read is refused with git's own reason, which says what to do."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.patches import review_patches
from nyxflow_engine.tools.registry import ToolCall
from tests.support.repos import CALC, GOOD_DIFF, git, planted_repo


async def _ignore(_: Sequence[pb.Artifact], __: Sequence[pb.Finding]) -> None:
    return None


async def _refusal(folder: Path) -> str:
    with pytest.raises(InvalidArgument) as refused:
        await ToolCall({"path": str(folder)}, "", None).repository()  # type: ignore[arg-type]
    assert refused.value.field == "params.path"
    return str(refused.value)


async def test_a_plain_folder_is_refused_with_git_s_reason(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()

    assert "not a git repository" in await _refusal(tmp_path / "plain")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user takes root")
async def test_a_repository_of_another_user_names_safe_directory(tmp_path: Path) -> None:
    """The usual case in a container: the engine runs as nobody, the checkout is someone
    else's. The error said only "is not a git work tree"."""
    repo = planted_repo(tmp_path)
    tmp_path.chmod(0o755)
    for folder, _, names in os.walk(repo):
        for path in (folder, *(os.path.join(folder, name) for name in names)):
            shutil.chown(path, 1000, 1000)

    message = await _refusal(repo)

    assert "dubious ownership" in message and "safe.directory" in message, message


async def test_a_repository_without_commits_is_refused_a_review(tmp_path: Path) -> None:
    """Its scan shows the staged files, but there is no HEAD to patch: every diff was
    rejected with "does not exist in index", as if the model had been wrong."""
    repo = tmp_path / "fresh"
    repo.mkdir()
    (repo / "calc.py").write_text(CALC)
    git(repo, "init", "-q")
    git(repo, "add", ".")

    with pytest.raises(InvalidArgument, match="has no commits yet") as refused:
        await review_patches(ToolCall({"path": str(repo)}, GOOD_DIFF, _ignore))
    assert refused.value.field == "params.path"
