"""A repository the tools cannot read is refused with git's own reason, which says what to do."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nyxflow.errors import InvalidArgument
from nyxflow_engine.tools.registry import ToolCall
from tests.support.repos import planted_repo


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
