"""`scan_repository` on a real git repository: it shows HEAD, which the review patches, names
what is not committed, and never follows a tracked symlink out of the repository."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nyxflow.constants import SCAN_MAXIMA
from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools import repository
from nyxflow_engine.tools.head import contents, head_of
from nyxflow_engine.tools.patches import review_patches
from nyxflow_engine.tools.registry import ToolCall
from nyxflow_engine.tools.repository import recency, scan_repository, summary
from tests.support.repos import CALC, GOOD_DIFF, git, planted_repo


async def _ignore(_: Sequence[pb.Artifact], __: Sequence[pb.Finding]) -> None:
    return None


async def _scan(repo: Path, group: str = "file") -> tuple[str, dict[str, Any]]:
    text = await scan_repository(ToolCall({"path": str(repo), "group": group}, "", _ignore))
    return text, json.loads(text)


def _commit(repo: Path) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "more")


async def test_a_tracked_symlink_is_skipped_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NYXFLOW_SCAN_SECRET", "engine-only-value")
    outside = tmp_path / "outside.md"
    outside.write_text("far outside the repository\n")
    repo = planted_repo(tmp_path)
    os.symlink(outside, repo / "notes.md")
    os.symlink("/proc/self/environ", repo / "env.sh")
    os.symlink("calc.py", repo / "same.py")  # inside, yet a link all the same
    _commit(repo)

    for group in ("file", "directory"):
        text, scan = await _scan(repo, group)

        assert "engine-only-value" not in text and "far outside" not in text
        assert scan["skipped"] == {"symlinks": ["env.sh", "notes.md", "same.py"]}
        assert [f["path"] for f in scan["listing"]] == ["calc.py", "test_calc.py", "util.py"]


async def test_the_scan_shows_head_and_names_the_uncommitted_changes(tmp_path: Path) -> None:
    repo = planted_repo(tmp_path)
    (repo / "calc.py").write_text(CALC.replace("def double(x):", "def twice(x):"))
    (repo / "new.py").write_text("untracked = True\n")

    _, scan = await _scan(repo)

    assert scan["head"] == git(repo, "rev-parse", "HEAD").strip()
    shown = {item["path"]: item["content"] for item in scan["items"]}
    assert shown["calc.py"] == CALC and "new.py" not in shown
    assert scan["uncommitted"]["files"] == 1 and scan["uncommitted"]["paths"] == ["calc.py"]
    # A diff written against what was shown is what the review accepts.
    report = json.loads(await review_patches(ToolCall({"path": str(repo)}, GOOD_DIFF, _ignore)))
    assert [a["files"] for a in report["accepted"]] == [["calc.py"]], report


async def test_a_committed_tree_has_nothing_uncommitted(tmp_path: Path) -> None:
    repo = planted_repo(tmp_path)

    _, scan = await _scan(repo)

    assert "uncommitted" not in scan and "skipped" not in scan
    assert scan["files"] == 3 and scan["left_out"]["files"] == 0


async def test_a_committed_file_named_outside_utf8_is_not_uncommitted(tmp_path: Path) -> None:
    """Its name, decoded to be shown ("caf\ufffd.py"), was looked for on disk: not found, it
    was reported uncommitted in a tree git calls clean."""
    repo = planted_repo(tmp_path)
    with open(os.fsencode(repo) + b"/caf\xe9.py", "wb") as file:
        file.write(b"x = 1\n")
    _commit(repo)
    assert git(repo, "status", "--porcelain") == ""

    _, scan = await _scan(repo)

    assert "uncommitted" not in scan, scan["uncommitted"]
    assert "caf\ufffd.py" in [f["path"] for f in scan["listing"]]
    with open(os.fsencode(repo) + b"/caf\xe9.py", "wb") as file:
        file.write(b"x = 2\n")  # and changed, it is named so
    _, scan = await _scan(repo)
    assert scan["uncommitted"]["paths"] == ["caf\ufffd.py"]


async def test_a_sparse_checkout_s_files_outside_it_are_not_uncommitted(tmp_path: Path) -> None:
    """Files outside a sparse checkout are absent from disk by design (skip-worktree): every
    one was reported uncommitted."""
    repo = planted_repo(tmp_path)
    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_text("# guide\n")
    _commit(repo)
    git(repo, "sparse-checkout", "set", "--no-cone", "/*.py")
    assert not (repo / "docs").exists() and git(repo, "status", "--porcelain") == ""

    _, scan = await _scan(repo)

    assert "uncommitted" not in scan, scan["uncommitted"]
    assert "docs/guide.md" in [f["path"] for f in scan["listing"]]  # HEAD's, all the same
    (repo / "util.py").write_text("changed inside the checkout\n")
    _, scan = await _scan(repo)
    assert scan["uncommitted"]["paths"] == ["util.py"]


async def test_without_commits_the_staged_files_are_read_from_their_objects(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "fresh"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "app.py").write_text("print('hi')\n")
    os.symlink("/proc/self/environ", repo / "env.sh")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    (repo / "pkg" / "app.py").write_text("print('not staged')\n")

    text, scan = await _scan(repo)

    assert scan["head"] is None and scan["skipped"] == {"symlinks": ["env.sh"]}
    assert scan["listing"] == [{"path": "pkg/app.py", "size": 12, "language": "Python"}]
    assert [i["content"] for i in scan["items"]] == ["print('hi')\n"] and "PATH=" not in text


async def test_a_file_cut_to_its_budget_says_so(tmp_path: Path) -> None:
    """The model took a cut file for a whole one: a hunk at its 'end' never applies."""
    repo = planted_repo(tmp_path)
    (repo / "big.py").write_text("x = 1\n" * 5_000)  # 30,000 bytes, over the 20,000 a file
    _commit(repo)

    _, report = await _scan(repo)

    items = {item["path"]: item for item in report["items"]}
    assert items["big.py"]["truncated"] == {"shown_bytes": 20_000, "file_bytes": 30_000}
    assert len(items["big.py"]["content"]) == 20_000
    assert "truncated" not in items["calc.py"]


async def test_a_folder_that_is_no_git_work_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(InvalidArgument, match="is not a git work tree") as refused:
        await _scan(tmp_path / "plain")
    assert refused.value.field == "params.path"


async def test_files_named_outside_ascii_count_as_recently_changed(tmp_path: Path) -> None:
    repo = planted_repo(tmp_path)
    names = ["é.py", 'quote"d.py', "tab\tname.py", "new\nline.py"]
    for name in names:
        (repo / name).write_text("x = 1\n")
    _commit(repo)
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q",
        "--allow-empty", "-m", "nothing")  # fmt: skip

    when = await recency(repo, "HEAD")

    assert set(names) <= set(when), sorted(when)
    assert set(when) == {"calc.py", "test_calc.py", "util.py", *names}
    assert all(isinstance(t, int) and t > 0 for t in when.values())


async def test_recent_changes_are_read_from_the_commit_scanned(tmp_path: Path) -> None:
    """The log was of HEAD as it was when read, later than the commit the scan listed (a
    commit made, a branch checked out, mid-scan): files changed after it counted as recent."""
    repo = planted_repo(tmp_path)
    scanned = git(repo, "rev-parse", "HEAD").strip()
    (repo / "later.py").write_text("y = 2\n")
    _commit(repo)

    (repo / scanned).write_text("a file named as the commit")  # "ambiguous argument"

    when = await recency(repo, scanned)

    assert "later.py" not in when and "calc.py" in when
    assert "later.py" in await recency(repo, "HEAD")


async def test_only_the_head_of_each_sampled_blob_is_read(tmp_path: Path) -> None:
    """A tracked dump was read whole (into the engine's memory) to show 20 KB of it; the
    blobs after it must still be read from where they start."""
    repo = planted_repo(tmp_path)
    big = "".join(f"row {i:07d} " + "x" * 50 + "\n" for i in range(60_000))  # about 3.7 MB
    (repo / "dump.sql").write_text(big)
    (repo / "z.txt").write_text("after the dump\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "dump")
    head = await head_of(repo)
    entries = sorted(head.files, key=lambda e: e.path)

    heads = await contents(repo, entries, 100)

    assert heads["dump.sql"] == big.encode()[:100]
    assert heads["z.txt"] == b"after the dump\n"
    assert all(len(h) <= 100 for h in heads.values())
    _, report = await _scan(repo)
    (dump,) = [i for i in report["items"] if i["path"] == "dump.sql"]
    assert dump["truncated"] == {"shown_bytes": 20_000, "file_bytes": len(big)}
    assert dump["content"] == big[:20_000]


def _tenants(tmp_path: Path) -> tuple[Path, Path]:
    """A repositories root holding tenant t2's repository; t1's folder, empty."""
    root = tmp_path / "root"
    (root / "t1").mkdir(parents=True)
    (root / "t2").mkdir()
    return root, planted_repo(root / "t2")


async def _as_t1(root: Path, folder: Path) -> None:
    """Scan `folder` as tenant t1, then review a diff of it: both read the repository."""
    call = ToolCall({"path": str(folder), "group": "file"}, GOOD_DIFF, _ignore, "t1", str(root))
    await scan_repository(call)
    await review_patches(call)


@pytest.mark.parametrize(
    "pointer", ["gitfile", "symlink", "alternates", "objects symlink", "relayed objects"]
)
async def test_a_git_dir_leading_out_of_the_tenants_folder_is_refused(
    tmp_path: Path, pointer: str
) -> None:
    """t1's folder was checked, but git reads what its `.git` leads to: a gitfile naming t2's
    git dir, a `.git` symlink, an alternate, a symlink inside `.git` showed t1 t2's source."""
    root, theirs = _tenants(tmp_path)
    mine = root / "t1" / "evil"
    if pointer == "gitfile":
        mine.mkdir()
        (mine / ".git").write_text(f"gitdir: {theirs / '.git'}\n")
    elif pointer == "symlink":
        mine.mkdir()
        (mine / ".git").symlink_to(theirs / ".git")
    else:
        git(root / "t1", "init", "-q", "evil")
        if pointer == "alternates":
            (mine / ".git/objects/info/alternates").write_text(f"{theirs / '.git/objects'}\n")
        elif pointer == "objects symlink":
            git(theirs, "repack", "-adq")
            os.rmdir(mine / ".git/objects/pack")
            (mine / ".git/objects/pack").symlink_to(theirs / ".git/objects/pack")
        else:  # through a folder of t1's own that holds links to t2's packs
            git(theirs, "repack", "-adq")
            relay = root / "t1" / "relay"
            relay.mkdir()
            for pack in (theirs / ".git/objects/pack").iterdir():
                (relay / pack.name).symlink_to(pack)
            os.rmdir(mine / ".git/objects/pack")
            (mine / ".git/objects/pack").symlink_to(relay)
        git(mine, "symbolic-ref", "HEAD", git(theirs, "symbolic-ref", "HEAD").strip())
        git(mine, "update-ref", "HEAD", git(theirs, "rev-parse", "HEAD").strip())
    assert "return a - b" in git(mine, "show", "HEAD:calc.py")  # git reads t2's objects

    with pytest.raises(InvalidArgument, match="leads out of this tenant's folder") as refused:
        await _as_t1(root, mine)

    assert refused.value.field == "params.path"
    assert str(theirs / ".git") in refused.value.message


async def test_a_hook_linked_out_of_the_tenants_folder_is_no_reason_to_refuse(
    tmp_path: Path,
) -> None:
    """git never runs a hook here (core.hooksPath), and a repository whose pre-commit hook
    links to /usr/bin/true was refused as leading out of the tenant's folder."""
    root, _ = _tenants(tmp_path)
    mine = planted_repo(root / "t1")
    (mine / ".git/hooks/pre-commit").symlink_to("/usr/bin/true")

    await _as_t1(root, mine)


async def test_git_dirs_and_alternates_inside_the_tenants_folder_are_read(tmp_path: Path) -> None:
    """A linked work tree and a clone sharing objects with the tenant's own repository."""
    root, _ = _tenants(tmp_path)
    mine = planted_repo(root / "t1")
    git(mine, "worktree", "add", "-q", "-b", "other", str(root / "t1" / "linked"))
    git(root / "t1", "clone", "-q", "--shared", str(mine), "borrowing")
    assert (root / "t1/borrowing/.git/objects/info/alternates").exists()

    for folder in (mine, root / "t1" / "linked", root / "t1" / "borrowing"):
        await _as_t1(root, folder)


@pytest.mark.parametrize("key", sorted(SCAN_MAXIMA))
async def test_the_scan_refuses_to_show_more_than_its_bounds(tmp_path: Path, key: str) -> None:
    """A workflow stored before runs checked them: the tool keeps the same bounds."""
    repo = planted_repo(tmp_path)
    params = {"path": str(repo), "group": "file", key: SCAN_MAXIMA[key] + 1}

    with pytest.raises(InvalidArgument, match=str(SCAN_MAXIMA[key])) as refused:
        await scan_repository(ToolCall(params, "", _ignore))

    assert refused.value.field == f"params.{key}"
    await scan_repository(ToolCall({**params, key: SCAN_MAXIMA[key]}, "", _ignore))


def _files_in_folders(repo: Path, count: int) -> None:
    for i in range(count):
        folder = repo / f"d{i // 10:04d}"
        folder.mkdir(exist_ok=True)
        (folder / f"m{i:05d}.py").write_text("X = 1\n")
    _commit(repo)


async def test_the_scan_lists_a_bounded_number_of_files_and_counts_every_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing held every file: 150,000 of them made the step's output and its
    step_completed event a write of 83.6 MiB, more than a message holds, and the run failed."""
    monkeypatch.setattr(repository, "LISTING", 20, raising=False)
    monkeypatch.setattr(repository, "FOLDERS", 3, raising=False)
    sizes = []
    for count in (100, 1_000):
        (tmp_path / str(count)).mkdir()
        repo = planted_repo(tmp_path / str(count))
        _files_in_folders(repo, count)

        text, scan = await _scan(repo, group="")

        sizes.append(len(text))
        assert scan["files"] == count + 3 and len(scan["listing"]) == 20
        assert scan["listing_left_out"]["files"] == count + 3 - 20
        assert scan["folders"]["count"] == count // 10 + 1  # the planted files' folder, "."
        assert list(scan["folders"]["largest"].values()) == [10, 10, 10]
        brief = summary(text)
        assert brief["folders"]["count"] == count // 10 + 1
        assert brief["listing_left_out"]["files"] == count + 3 - 20
    assert abs(sizes[1] - sizes[0]) < 100, sizes  # ten times the files, the same output
