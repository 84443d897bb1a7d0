"""Where a tenant's repositories may be (nyxflow/repos.py): the path as runs stores it, and
the folder as the engine reads it, symlinks resolved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nyxflow.errors import InvalidArgument
from nyxflow.repos import re_rooted, readable_folder, written_path


def test_without_a_root_any_absolute_path_is_taken_normalized() -> None:
    assert written_path("/src/a/../shop/", None, "t1", "path") == "/src/shop"
    assert written_path("~/shop", None, "t1", "path") == os.path.expanduser("~/shop")
    with pytest.raises(InvalidArgument, match="absolute") as refused:
        written_path("shop", None, "t1", "path")
    assert refused.value.field == "path"


def test_with_a_root_paths_are_the_tenants_folder_s() -> None:
    assert written_path("shop", "/repos", "t1", "path") == "/repos/t1/shop"
    assert written_path("/repos/t1/shop/.", "/repos/", "t1", "path") == "/repos/t1/shop"
    for outside in ("/repos/t2/shop", "../t2/shop", "/repos/t1/../t2", "/etc", "/repos/t1x"):
        with pytest.raises(InvalidArgument, match="inside this tenant's folder") as refused:
            written_path(outside, "/repos", "t1", "path")
        assert refused.value.field == "path", outside


def test_a_symlink_out_of_the_tenants_folder_is_refused_when_read(tmp_path: Path) -> None:
    root = tmp_path / "repos"
    (root / "t1" / "shop").mkdir(parents=True)
    (root / "t2" / "secret").mkdir(parents=True)
    (root / "t1" / "theirs").symlink_to(root / "t2" / "secret")

    assert readable_folder("shop", str(root), "t1", "params.path") == root / "t1" / "shop"
    with pytest.raises(InvalidArgument, match="symlinks resolved"):
        readable_folder("theirs", str(root), "t1", "params.path")
    with pytest.raises(InvalidArgument, match="not a directory"):
        readable_folder("missing", str(root), "t1", "params.path")


def test_a_path_is_re_rooted_only_from_inside_the_old_tenants_folder() -> None:
    assert re_rooted("/r/a/shop/sub", "/r", "a", "b") == "/r/b/shop/sub"
    assert re_rooted("/r/a", "/r", "a", "b") == "/r/b"
    assert re_rooted("/r/ab/shop", "/r", "a", "b") is None  # a sibling, not inside
    assert re_rooted("/elsewhere/shop", "/r", "a", "b") is None  # added before the root
    assert re_rooted("shop", "/r", "a", "b") is None  # relative: already the tenant's own
    assert re_rooted("", "/r", "a", "b") is None
