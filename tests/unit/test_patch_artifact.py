"""The review's `patch` artifact applies to HEAD with plain `git apply`, whatever the
repository's attributes say of its files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.patches import review_patches
from nyxflow_engine.tools.registry import ToolCall
from tests.support.repos import git, planted_repo

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
