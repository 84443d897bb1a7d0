"""Splitting a JSON output into fan-out items: a repository scan whose files hold markdown code
fences, and a model's answer in a fenced block."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.splitting import split_items
from nyxflow_engine.tools.registry import ToolCall
from nyxflow_engine.tools.repository import scan_repository
from tests.support.repos import git, planted_repo

README = "# shop\n\nInstall:\n\n```sh\npip install shop\n```\n\nThen ```run``` it.\n"


async def _ignore(_: Sequence[pb.Artifact], __: Sequence[pb.Finding]) -> None:
    return None


async def test_a_scan_of_files_with_code_fences_splits_into_its_items(tmp_path: Path) -> None:
    repo = planted_repo(tmp_path)
    (repo / "README.md").write_text(README)
    git(repo, "add", "README.md")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "readme")
    scan = await scan_repository(ToolCall({"path": str(repo), "group": "file"}, "", _ignore))

    items = split_items(scan, "json")

    assert sorted(i.heading for i in items) == ["README.md", "calc.py", "test_calc.py", "util.py"]
    readme = next(json.loads(i.text) for i in items if i.heading == "README.md")
    assert readme["content"] == README


def test_a_fenced_answer_is_read_from_its_block() -> None:
    answer = 'Here they are:\n\n```json\n["a", "b ``` c"]\n```\nDone.'

    assert [i.text for i in split_items(answer, "json")] == ["a", "b ``` c"]


def test_text_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        split_items("```json\n[1, 2\n```", "json")
    assert refused.value.field == "split" and "not JSON" in str(refused.value)
