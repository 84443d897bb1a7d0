"""The engine runs git on what a tenant's code can write: its repository (theirs, configured as
they like) and, after each test command, the scratch clone. Nothing from a repository's config,
attributes or hooks runs in the engine: there it would run unsandboxed, its secrets readable
in /proc/<engine>/environ. Each planted filter here would leave a mark where it ran."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools import scratch
from nyxflow_engine.tools.patches import review_patches
from nyxflow_engine.tools.registry import ToolCall
from nyxflow_engine.tools.repository import scan_repository
from tests.support.repos import GOOD_DIFF, TEST_COMMAND, git, planted_repo


async def _ignore(_: Sequence[pb.Artifact], __: Sequence[pb.Finding]) -> None:
    return None


async def _review(repo: Path, command: str, **params: Any) -> dict[str, Any]:
    call = ToolCall({"path": str(repo), "test_command": command, **params}, GOOD_DIFF, _ignore)
    report: dict[str, Any] = json.loads(await review_patches(call))
    return report


def _planter(tmp_path: Path, script: str) -> str:
    """A test command that plants `script` (no `set -e`: each try fails alone), then tests."""
    planter = tmp_path / "plant.sh"
    planter.write_text(script)
    return f"sh -c 'sh {planter}; {TEST_COMMAND}'"


async def test_the_test_command_cannot_plant_a_filter_or_hook_in_its_clone(
    tmp_path: Path,
) -> None:
    """`git clean` never touches .git: a smudge filter planted in the clone's config ran in the
    engine's own `checkout-index` as the clone was put back after the tests."""
    repo = planted_repo(tmp_path)
    ran = tmp_path / "ran"
    command = _planter(
        tmp_path,
        f"git config filter.x.smudge 'touch {ran}; cat'\n"
        f"git config filter.x.clean 'touch {ran}; cat'\n"
        f"git config core.fsmonitor 'touch {ran}; false'\n"
        "mkdir -p .git/info && echo '* filter=x' > .git/info/attributes\n"
        f"printf '#!/bin/sh\\ntouch {ran}\\n' > .git/hooks/post-checkout\n"
        "echo '# touched' >> util.py\n",  # a tracked file the engine must write back
    )

    report = await _review(repo, command)

    assert [a["files"] for a in report["accepted"]] == [["calc.py"]], report
    assert not ran.exists(), "the engine ran what the test command planted in its clone"


async def test_the_test_command_cannot_write_the_repository(tmp_path: Path) -> None:
    """The clone's alternates name the source's objects, and so the source: a clean filter
    planted there ran in the next scan's `git diff HEAD`."""
    repo = planted_repo(tmp_path)
    config = (repo / ".git" / "config").read_text()
    command = _planter(
        tmp_path,
        'src=$(dirname "$(dirname "$(cat .git/objects/info/alternates)")")\n'
        'git -C "$src" config filter.x.clean "touch planted; cat"\n'
        'echo "* filter=x" > "$src/.gitattributes"\n',
    )

    report = await _review(repo, command)

    assert [a["files"] for a in report["accepted"]] == [["calc.py"]], report
    assert (repo / ".git" / "config").read_text() == config
    assert not (repo / ".gitattributes").exists()


async def test_the_test_command_sees_no_other_run_s_scratch_clone(tmp_path: Path) -> None:
    """Another run's clone in the temp folder was the engine's user's to write: its .git too."""
    repo = planted_repo(tmp_path)
    other = scratch.make()  # another review's, running meanwhile
    try:
        (other / "config").write_text("[core]\n")
        command = _planter(tmp_path, f"echo '[filter \"x\"]' >> {other}/config\n")
        report = await _review(repo, command)
        assert [a["files"] for a in report["accepted"]] == [["calc.py"]], report
        assert (other / "config").read_text() == "[core]\n"
    finally:
        scratch.remove(other)


async def test_the_scan_runs_nothing_the_repository_s_config_names(tmp_path: Path) -> None:
    """The repository is the tenant's: a clean filter and an fsmonitor in its config, named by
    its attributes, never run in the engine, and its changes are still found."""
    repo = planted_repo(tmp_path)
    git(repo, "add", "test_calc.py")  # staged as it was: nothing (git here would run them)
    ran = tmp_path / "ran"
    git(repo, "config", "filter.x.clean", f"touch {ran}; cat")
    git(repo, "config", "core.fsmonitor", f"touch {ran}; false")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "attributes").write_text("* filter=x\n")
    (repo / "calc.py").write_text("changed, same size as before? no\n")
    (repo / "util.py").touch()  # its stat changed, not its contents

    scan = json.loads(await scan_repository(ToolCall({"path": str(repo)}, "", _ignore)))

    assert not ran.exists(), "the engine ran the repository's filter or fsmonitor"
    assert scan["uncommitted"]["paths"] == ["calc.py"], scan


async def test_a_change_of_the_same_size_is_uncommitted(tmp_path: Path) -> None:
    """Files are compared by contents, not only by size, and staged changes count."""
    repo = planted_repo(tmp_path)
    util = (repo / "util.py").read_text()
    (repo / "util.py").write_text(util.replace("upper", "lower"))
    (repo / "staged.py").write_text("x = 1\n")
    git(repo, "add", "staged.py")

    scan = json.loads(await scan_repository(ToolCall({"path": str(repo)}, "", _ignore)))

    assert scan["uncommitted"]["paths"] == ["staged.py", "util.py"], scan
