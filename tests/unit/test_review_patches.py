"""`review_patches` on a real git repository: the diffs read from the models' answers joined
(as the Review step's prompt has them), whole blocks only, and a rejected diff undone exactly."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nyxflow.errors import FailedPrecondition, InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.cut_off import marked
from nyxflow_engine.tools.patches import _crlf, review_patches
from nyxflow_engine.tools.registry import ToolCall
from nyxflow_engine.tools.repository import scan_repository
from tests.support.repos import CALC, GOOD_DIFF, git, planted_repo

MANY = "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(12))
# A two-hunk change to util.py, as an answer stopped at max_tokens leaves it: no closing fence.
TWO_HUNKS_CUT = (
    "```diff\n--- a/util.py\n+++ b/util.py\n"
    "@@ -1,4 +1,4 @@\n def f0():\n-    return 0\n+    return 100\n \n \n"
    "@@ -45,3 +45,3 @@\n def f11():\n-    return 11\n"
)
README = "# shop\n\nInstall:\n\n```sh\npip install shop\n```\n"
README_DIFF = (
    "```diff\n--- a/README.md\n+++ b/README.md\n@@ -1,7 +1,7 @@\n # shop\n \n"
    "-Install:\n+Install it:\n \n ```sh\n pip install shop\n ```\n```\n"
)
# The same three lines twice, the flag differing; the diff's line numbers point at the first
# block while its content fits only the second (models' line numbers are often off). A hunk
# at line 1 must apply there, so the blocks start at line 2.
# Names without a/ b/: a new file and a change, both in a folder (-p1 would strip it).
UNPREFIXED = (
    "```diff\n--- /dev/null\n+++ tests/test_util.py\n@@ -0,0 +1,2 @@\n"
    "+def test_x():\n+    assert True\n```\n\n"
    "```diff\n--- pkg/mod.py\n+++ pkg/mod.py\n@@ -1 +1 @@\n-X = 1\n+X = 2\n```"
)
# Answers the fan-out joins: a bare diff after prose, and one in a block with no language
# (a wrong one, to be rejected with its reason).
BARE_ANSWER = (
    "Here is the change:\n--- a/util.py\n+++ b/util.py\n@@ -1,2 +1,2 @@\n"
    " def shout(text):\n-    return text.upper()\n+    return text.upper() + '!'\n\nThat is all."
)
UNLABELLED = "```\n--- a/calc.py\n+++ b/calc.py\n@@ -5 +5 @@\n-def triple(x):\n+def t(x):\n```"
TWICE = "# conf\nx = 1\nflag = True\ny = 2\n" + "".join(f"pad{i} = {i}\n" for i in range(6))
TWICE += "x = 1\nflag = False\ny = 2\n"
OFFSET_DIFF = (
    "```diff\n--- a/conf.py\n+++ b/conf.py\n@@ -2,3 +2,3 @@\n"
    " x = 1\n-flag = False\n+flag = True\n y = 2\n```"
)


def _commit(repo: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", *files)
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "more")


async def _review(repo: Path, prompt: str, **params: Any) -> tuple[dict[str, Any], str]:
    saved: list[pb.Artifact] = []

    async def save(artifacts: Sequence[pb.Artifact], _: Sequence[pb.Finding]) -> None:
        saved.extend(artifacts)

    report = json.loads(await review_patches(ToolCall({"path": str(repo), **params}, prompt, save)))
    patch = next(a.content for a in saved if a.name == "patch")
    return report, patch


def _files(entries: list[dict[str, Any]]) -> list[list[str]]:
    return [e["files"] for e in entries]


async def test_an_answer_cut_off_is_reported_and_the_next_answer_s_diff_kept(
    tmp_path: Path,
) -> None:
    repo = planted_repo(tmp_path)
    _commit(repo, {"util.py": MANY})

    report, patch = await _review(repo, "\n\n".join([TWO_HUNKS_CUT, GOOD_DIFF]))

    assert report["proposed"] == 2
    assert _files(report["accepted"]) == [["calc.py"]]
    (cut,) = report["rejected"]
    assert cut["files"] == ["util.py"] and cut["reason"].startswith("cut off")
    assert "util.py" not in patch and "+    return a + b" in patch


async def test_a_diff_cut_between_its_hunks_is_never_applied(tmp_path: Path) -> None:
    """The first hunk alone would apply: only the missing closing fence tells."""
    repo = planted_repo(tmp_path)
    _commit(repo, {"util.py": MANY})
    first_hunk = TWO_HUNKS_CUT.split("@@ -45")[0]

    for prompt in (first_hunk, f"{GOOD_DIFF}\n\n{first_hunk}", f"{first_hunk}\n\n{GOOD_DIFF}"):
        report, patch = await _review(repo, prompt)

        assert ["util.py"] in _files(report["rejected"]), prompt
        assert "util.py" not in patch, prompt


async def test_a_diff_that_changes_a_markdown_file_s_fences_is_read_whole(
    tmp_path: Path,
) -> None:
    repo = planted_repo(tmp_path)
    _commit(repo, {"README.md": README})

    report, patch = await _review(repo, README_DIFF)

    assert _files(report["accepted"]) == [["README.md"]], report
    assert "+Install it:" in patch and " ```sh" in patch


async def test_a_diff_the_tests_reject_is_undone_where_it_applied(tmp_path: Path) -> None:
    """Undoing by `git apply -R` searches again and finds the first block, which the diff
    never touched: the rejected change then stays, and reaches the patch."""
    repo = planted_repo(tmp_path)
    _commit(repo, {"conf.py": TWICE})

    report, patch = await _review(repo, OFFSET_DIFF, test_command="false")

    assert report["accepted"] == [] and _files(report["rejected"]) == [["conf.py"]]
    assert report["rejected"][0]["reason"].startswith("tests failed")
    assert patch == "" and report["patch_bytes"] == 0


async def test_a_blank_test_command_is_none_and_one_that_cannot_be_split_is_refused(
    tmp_path: Path,
) -> None:
    """A workflow of one's own names the tool and its command: the same rules as a pipeline's
    start. Blank, it was split into nothing and every diff "failed its tests"."""
    repo = planted_repo(tmp_path)

    report, _ = await _review(repo, GOOD_DIFF, test_command="  \t")

    assert _files(report["accepted"]) == [["calc.py"]] and report["test_command"] is None
    with pytest.raises(InvalidArgument, match="No closing quotation") as refused:
        await _review(repo, GOOD_DIFF, test_command="pytest -k 'add")
    assert refused.value.field == "params.test_command"


async def test_a_folder_inside_the_repository_is_refused_naming_its_top(tmp_path: Path) -> None:
    """The review clones the whole repository: given a folder inside one, the scan showed
    paths the patches could not name. Both tools now ask for the top folder."""
    repo = planted_repo(tmp_path)
    (repo / "pkg").mkdir()
    with pytest.raises(InvalidArgument, match=f"inside the repository {repo}") as refused:
        await _review(repo / "pkg", GOOD_DIFF)
    assert refused.value.field == "params.path"


async def test_the_patch_applies_whatever_the_operator_s_git_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's git keeps its HOME (for safe.directory): a ~/.gitconfig with
    diff.noprefix made the patch's paths 'calc.py', which `git apply` takes as 'alc.py'."""
    home = tmp_path / "operator"
    home.mkdir()
    (home / ".gitconfig").write_text("[diff]\n\tnoprefix = true\n\tmnemonicPrefix = true\n")
    monkeypatch.setenv("HOME", str(home))
    repo = planted_repo(tmp_path)

    _, patch = await _review(repo, GOOD_DIFF)

    assert "\n+++ b/calc.py\n" in patch
    (tmp_path / "fix.patch").write_text(patch)
    git(repo, "apply", "--check", str(tmp_path / "fix.patch"))


async def test_a_diff_without_a_b_prefixes_lands_where_it_names(tmp_path: Path) -> None:
    """`git apply` strips a folder from each name: `+++ tests/test_util.py` made a
    test_util.py at the top, accepted with no files, and `pkg/mod.py` was "mod.py"."""
    repo = planted_repo(tmp_path)
    _commit(repo, {"tests/__init__.py": "", "pkg/mod.py": "X = 1\n"})

    report, patch = await _review(repo, UNPREFIXED)

    assert _files(report["accepted"]) == [["tests/test_util.py"], ["pkg/mod.py"]], report
    assert "\n+++ b/tests/test_util.py\n" in patch and "\n+++ b/pkg/mod.py\n" in patch
    (tmp_path / "fix.patch").write_text(patch)
    git(repo, "apply", str(tmp_path / "fix.patch"))
    assert (repo / "tests/test_util.py").exists() and not (repo / "test_util.py").exists()
    assert (repo / "pkg/mod.py").read_text() == "X = 2\n"


async def test_a_bare_diff_beside_a_fenced_one_is_reviewed_too(tmp_path: Path) -> None:
    """Bare diffs were read only when no answer of the whole fan-out had a fence: one
    answer's fenced block silently dropped every other answer's bare diff."""
    repo = planted_repo(tmp_path)

    report, patch = await _review(repo, "\n\n".join([GOOD_DIFF, BARE_ANSWER, UNLABELLED]))

    assert report["proposed"] == 3
    assert _files(report["accepted"]) == [["calc.py"], ["util.py"]], report
    (wrong,) = report["rejected"]
    assert wrong["files"] == ["calc.py"] and wrong["reason"].startswith("does not apply")
    assert "+    return a + b" in patch and "+    return text.upper() + '!'" in patch


async def test_a_bare_diff_of_an_answer_cut_off_is_never_applied(tmp_path: Path) -> None:
    """Without a fence nothing showed the cut: its first hunk applied and was accepted as the
    whole change. The fan-out marks the answer it joins cut (cut_off.py)."""
    repo = planted_repo(tmp_path)
    _commit(repo, {"util.py": MANY})
    first_hunk = TWO_HUNKS_CUT.split("@@ -45")[0].removeprefix("```diff\n")
    bare_good = GOOD_DIFF.removeprefix("```diff\n").removesuffix("```")

    for cut in (
        marked(first_hunk),
        marked(first_hunk.rstrip("\n")),
        marked("```diff\n" + first_hunk),
    ):
        report, patch = await _review(repo, f"{cut}\n\n{bare_good}\n\n```\nnot a diff\n```")

        assert report["proposed"] == 2, cut
        (rejected,) = report["rejected"]
        assert rejected["files"] == ["util.py"] and rejected["reason"].startswith("cut off"), cut
        assert _files(report["accepted"]) == [["calc.py"]], cut
        assert "util.py" not in patch, cut

    report, _ = await _review(repo, first_hunk)  # no mark: an answer that ended there
    assert _files(report["accepted"]) == [["util.py"]]


async def test_a_hunk_whose_header_miscounts_its_lines_is_applied(tmp_path: Path) -> None:
    """Models miscount a hunk's lengths: `@@ -1,6 +1,6 @@` over five lines was "corrupt
    patch", and a right change rejected. The lines are counted as they are."""
    repo = planted_repo(tmp_path)
    miscounted = GOOD_DIFF.replace("@@ -1,5 +1,5 @@", "@@ -1,6 +1,6 @@")

    report, patch = await _review(repo, miscounted)

    assert _files(report["accepted"]) == [["calc.py"]], report
    (tmp_path / "fix.patch").write_text(patch)
    git(repo, "apply", str(tmp_path / "fix.patch"))
    assert "return a + b" in (repo / "calc.py").read_text()


async def test_a_diff_written_with_lf_applies_to_a_file_committed_with_crlf(
    tmp_path: Path,
) -> None:
    """A model reads a file whose lines end in CRLF and answers its diff in LF: no context
    line matched, and every diff of a file committed from Windows was rejected."""
    repo = planted_repo(tmp_path)
    _commit(repo, {"calc.py": CALC.replace("\n", "\r\n")})
    blank_lost = GOOD_DIFF.replace("\n \n \n", "\n\n \n")  # a context line lost its space

    report, patch = await _review(repo, blank_lost)

    assert _files(report["accepted"]) == [["calc.py"]], report
    (tmp_path / "fix.patch").write_bytes(patch.encode())
    git(repo, "apply", str(tmp_path / "fix.patch"))
    fixed = (repo / "calc.py").read_bytes()
    assert b"    return a + b\r\n" in fixed and b"\n" not in fixed.replace(b"\r\n", b"")


async def test_a_diff_of_two_files_without_git_headers_is_applied_whole(tmp_path: Path) -> None:
    """Read with --recount, a hunk runs on to the next `@@` or `diff` line: the second file's
    ---/+++ lines went into the first file's hunk, and a right change was rejected."""
    repo = planted_repo(tmp_path)
    util = ["--- a/util.py", "+++ b/util.py", "@@ -1,2 +1,2 @@", " def shout(text):"]
    util += ["-    return text.upper()", "+    return text.upper() + '!'", "```"]
    both = GOOD_DIFF.removesuffix("```") + "\n".join(util)

    report, patch = await _review(repo, both)

    assert _files(report["accepted"]) == [["calc.py", "util.py"]], report
    assert "+    return text.upper() + '!'" in patch and "+    return a + b" in patch


async def test_a_miscounted_diff_applies_to_a_file_committed_with_crlf(tmp_path: Path) -> None:
    """The hunk's lines were counted by its header to put them in CRLF: those past a count
    too small kept LF, and the diff was rejected."""
    repo = planted_repo(tmp_path)
    _commit(repo, {"calc.py": CALC.replace("\n", "\r\n")})

    report, _ = await _review(repo, GOOD_DIFF.replace("@@ -1,5 +1,5 @@", "@@ -1,3 +1,3 @@"))

    assert _files(report["accepted"]) == [["calc.py"]], report


async def test_a_nested_repository_the_tests_made_is_removed_before_the_next_diff(
    tmp_path: Path,
) -> None:
    """`git clean -fdx` leaves a nested repository (a git tool's suite makes fixtures so):
    the next diff's tests found it there and failed."""
    repo = planted_repo(tmp_path)
    util_diff = (
        "```diff\n--- a/util.py\n+++ b/util.py\n@@ -1,2 +1,2 @@\n def shout(text):\n"
        "-    return text.upper()\n+    return text.upper() + '!'\n```\n"
    )
    command = "sh -c 'mkdir fixture && git init -q fixture'"

    report, patch = await _review(repo, f"{GOOD_DIFF}\n\n{util_diff}", test_command=command)

    assert _files(report["accepted"]) == [["calc.py"], ["util.py"]], report["rejected"]
    assert "fixture" not in patch


@pytest.mark.parametrize("root", ["~/repos", "repos", "./repos/../repos"])
async def test_a_repositories_root_written_with_a_tilde_or_relative_runs_the_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: str
) -> None:
    """NYXFLOW_REPOS_ROOT=~/repos: the scan took `~` as the home folder, the review's walls
    took the root as written, and every test command failed ("cannot build the command's
    walls: No such file or directory: '~/repos'")."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "repos" / "t1").mkdir(parents=True)
    repo = planted_repo(tmp_path / "repos" / "t1")
    saved: list[pb.Artifact] = []

    async def save(artifacts: Sequence[pb.Artifact], _: Sequence[pb.Finding]) -> None:
        saved.extend(artifacts)

    params = {"path": str(repo), "test_command": "true"}
    call = ToolCall(params, GOOD_DIFF, save, tenant_id="t1", repos_root=root)
    report = json.loads(await review_patches(call))

    assert _files(report["accepted"]) == [["calc.py"]], report["rejected"]


async def _scan(repo: Path) -> str:
    async def save(*_: Any) -> None: ...

    return await scan_repository(ToolCall({"path": str(repo), "group": "file"}, "", save))


async def test_the_diffs_are_checked_against_the_commit_the_scan_read(tmp_path: Path) -> None:
    """The review cloned HEAD as it was when the review ran: a branch checked out or a commit
    made after the scan (the models wrote their diffs against the scan) rejected good diffs,
    or made a patch for a tree they never saw."""
    repo = planted_repo(tmp_path)
    scan = await _scan(repo)
    scanned = json.loads(scan)["head"]
    git(repo, "checkout", "-qb", "feature")
    _commit(repo, {"calc.py": "def add(a, b):\n    return b - a\n"})

    report, patch = await _review(repo, f"{scan}\n\n{GOOD_DIFF}", scanned=True)

    assert _files(report["accepted"]) == [["calc.py"]], report["rejected"]
    assert report["head"] == scanned and patch.startswith(f"base-commit: {scanned}\n")
    assert report["patch_bytes"] == len(patch.encode())
    (tmp_path / "fix.patch").write_text(patch)
    git(repo, "checkout", "-q", scanned)
    git(repo, "apply", "--check", str(tmp_path / "fix.patch"))


async def test_a_scanned_commit_no_longer_in_the_repository_fails_the_review_naming_it(
    tmp_path: Path,
) -> None:
    repo = planted_repo(tmp_path)
    scan = await _scan(repo)
    scanned = json.loads(scan)["head"]
    git(
        repo,
        "-c",
        "user.email=t@example.com",
        "-c",
        "user.name=t",
        "commit",
        "-q",
        "--amend",
        "-m",
        "x",
    )
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")

    with pytest.raises(FailedPrecondition, match=f"the scanned commit {scanned} is no longer"):
        await _review(repo, f"{scan}\n\n{GOOD_DIFF}", scanned=True)
    with pytest.raises(InvalidArgument, match="must open with a repository scan") as refused:
        await _review(repo, GOOD_DIFF, scanned=True)
    assert refused.value.field == "prompt"


def _one_line(old: str, new: str) -> str:
    """A diff block changing one line, its ---/+++ names as given."""
    return f"```diff\n--- {old}\n+++ {new}\n@@ -1 +1 @@\n-x\n+y\n```\n"


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("a/../shop.py", "b/../shop.py", "../shop.py"),
        ("/dev/null", "b/../escaped.txt", "../escaped.txt"),
        ("ABS/util.py", "ABS/util.py", "ABS/util.py"),  # the repository's own path, absolute
        ("", "", ""),
        ('"a/x\\000y.py"', '"b/x\\000y.py"', "x\x00y.py"),
    ],
    ids=["dotdot", "new-dotdot", "absolute", "empty", "nul"],
)
async def test_a_diff_naming_no_path_inside_is_rejected_and_the_good_ones_kept(
    tmp_path: Path, old: str, new: str, named: str
) -> None:
    """Its names went to `git ls-files`, which exits fatally on them: the whole review failed
    (FailedPrecondition), and every diff accepted before it was lost."""
    repo = planted_repo(tmp_path)
    old, new, named = (n.replace("ABS", str(repo)) for n in (old, new, named))

    report, patch = await _review(repo, f"{GOOD_DIFF}\n\n{_one_line(old, new)}")

    assert _files(report["accepted"]) == [["calc.py"]], report
    (rejected,) = report["rejected"]
    assert rejected["reason"].startswith("names no path inside the repository"), rejected
    assert rejected["reason"].endswith(repr(named)) and rejected["files"] == [named]
    assert "+    return a + b" in patch and "shop.py" not in patch
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize(
    ("quoted", "named"),
    [('"a/src\\xml\\p.py"', "src\\xml\\p.py"), ('"a/p.py\\"', "p.py\\")],
    ids=["bad-escape", "trailing-backslash"],
)
async def test_a_quoted_name_with_a_bad_escape_is_rejected_not_fatal(
    tmp_path: Path, quoted: str, named: str
) -> None:
    """A Windows path a model quoted (`\\x` is no escape) raised ValueError out of the diff
    reader, and the whole review failed: the name is kept as written, and git rejects it."""
    repo = planted_repo(tmp_path)
    new = '"b' + quoted[2:]

    report, _ = await _review(repo, f"{GOOD_DIFF}\n\n{_one_line(quoted, new)}")

    assert _files(report["accepted"]) == [["calc.py"]], report
    (rejected,) = report["rejected"]
    assert rejected["files"] == [named] and rejected["reason"].startswith("does not apply: ")


async def test_a_timed_out_test_command_s_output_is_in_the_reason(tmp_path: Path) -> None:
    """The reason was only "timed out after 1 s": what the tests printed until then (which
    test hung) was thrown away."""
    repo = planted_repo(tmp_path)
    command = "sh -c 'echo test_checkout.py::test_pay RUNNING; sleep 30'"

    # 3 s: the command starts and prints in time even on a loaded machine.
    report, _ = await _review(repo, GOOD_DIFF, test_command=command, test_timeout_s=3)

    (rejected,) = report["rejected"]
    assert rejected["reason"] == (
        "tests failed (exit -1): test_checkout.py::test_pay RUNNING\ntimed out after 3 s"
    ), rejected


async def test_a_name_git_cannot_list_is_no_file_in_crlf(tmp_path: Path) -> None:
    """`ls-files` exiting fatally on a diff's name failed the whole review: that diff is
    rejected by `git apply`'s own reason instead (names the review lets through are listed)."""
    repo = planted_repo(tmp_path)
    _commit(repo, {"dos.py": "x = 1\r\n"})

    assert await _crlf(repo, ["dos.py", "calc.py"]) == {"dos.py"}
    assert await _crlf(repo, ["dos.py", "../outside.py"]) == set()
