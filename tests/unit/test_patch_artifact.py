"""The review's `patch` artifact applies to HEAD with plain `git apply`, whatever the
repository's attributes say of its files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.patches import review_patches
from nyxflow_engine.tools.registry import ToolCall
from tests.support.repos import GOOD_DIFF, git, planted_repo

MIN_JS_DIFF = (
    "```diff\n--- a/app.min.js\n+++ b/app.min.js\n@@ -1,2 +1,2 @@\n"
    "-var a = 1;\n+var a = 3;\n var b = 2;\n```\n"
)


async def test_the_patch_of_a_file_marked_minus_diff_applies(tmp_path: Path) -> None:
    """`*.min.js -diff` made the combined diff say "Binary files … differ"."""
    repo = planted_repo(tmp_path)
    (repo / ".gitattributes").write_text("*.min.js -diff\n")
    (repo / "app.min.js").write_text("var a = 1;\nvar b = 2;\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "js")
    saved: list[pb.Artifact] = []

    async def save(artifacts: Sequence[pb.Artifact], _: Sequence[pb.Finding]) -> None:
        saved.extend(artifacts)

    call = ToolCall({"path": str(repo)}, MIN_JS_DIFF, save)
    report = json.loads(await review_patches(call))

    assert [a["files"] for a in report["accepted"]] == [["app.min.js"]], report
    (tmp_path / "fix.patch").write_text(next(a.content for a in saved if a.name == "patch"))
    git(repo, "apply", str(tmp_path / "fix.patch"))
    assert (repo / "app.min.js").read_text() == "var a = 3;\nvar b = 2;\n"


async def _patch_of(repo: Path, prompt: str) -> tuple[dict[str, Any], str]:
    saved: list[pb.Artifact] = []

    async def save(artifacts: Sequence[pb.Artifact], _: Sequence[pb.Finding]) -> None:
        saved.extend(artifacts)

    report = json.loads(await review_patches(ToolCall({"path": str(repo)}, prompt, save)))
    return report, next(a.content for a in saved if a.name == "patch")


def _commit(repo: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (repo / name).write_bytes(data)
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "more")


async def test_the_patch_of_a_file_that_is_not_utf8_keeps_its_bytes(tmp_path: Path) -> None:
    """The combined diff was decoded with its bytes replaced: a Latin-1 line in its context
    came out as U+FFFD, and the stored patch applied to nothing. That file's diff is now a
    binary patch (ASCII); the others stay as they read."""
    repo = planted_repo(tmp_path)
    latin1 = "# café, naïve\nA = 1\nB = 2\nC = 3\n".encode("latin-1")
    name = "wéird [1] *.py"  # its name must reach the attributes as it is
    _commit(repo, {"m.py": latin1, name: latin1})
    changes = [
        f"```diff\n--- a/{file}\n+++ b/{file}\n@@ -3,2 +3,2 @@\n B = 2\n-C = 3\n+C = 4\n```\n"
        for file in ("m.py", name)
    ]

    report, patch = await _patch_of(repo, "\n".join([*changes, GOOD_DIFF]))

    assert len(report["accepted"]) == 3, report
    assert "\ufffd" not in patch and "GIT binary patch" in patch
    assert "+    return a + b" in patch  # calc.py's diff is text still
    (tmp_path / "fix.patch").write_text(patch)
    git(repo, "apply", str(tmp_path / "fix.patch"))
    for file in ("m.py", name):
        assert (repo / file).read_bytes() == latin1.replace(b"C = 3", b"C = 4")


async def test_a_nul_in_a_file_diffed_as_text_is_not_replaced(tmp_path: Path) -> None:
    """A file the repository marks `diff` is diffed as text whatever it holds: its NUL went
    into the patch, and was stored as U+FFFD."""
    repo = planted_repo(tmp_path)
    _commit(repo, {".gitattributes": b"*.dat diff\n", "x.dat": b"a\0b\nc = 1\nd\n"})
    change = "```diff\n--- a/x.dat\n+++ b/x.dat\n@@ -1,3 +1,3 @@\n a\0b\n-c = 1\n+c = 2\n d\n```"

    report, patch = await _patch_of(repo, change)

    assert [a["files"] for a in report["accepted"]] == [["x.dat"]], report
    assert "\0" not in patch and "\ufffd" not in patch
    (tmp_path / "fix.patch").write_text(patch)
    git(repo, "apply", str(tmp_path / "fix.patch"))
    assert (repo / "x.dat").read_bytes() == b"a\0b\nc = 2\nd\n"
