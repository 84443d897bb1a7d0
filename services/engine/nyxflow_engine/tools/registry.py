"""Tool name → async function(call) → output text. Tools are deterministic: no model."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow.repos import readable_folder, tenant_folder, within
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.tools.commands import GIT, run
from nyxflow_engine.tools.sandbox import SANDBOXED, Sandbox

# Alternates of alternates git follows (its own limit is 5): deeper is refused, not followed.
ALTERNATES_DEPTH = 5

SaveArtifacts = Callable[[Sequence[pb.Artifact], Sequence[pb.Finding]], Awaitable[None]]


@dataclass(frozen=True)
class ToolCall:
    params: dict[str, Any]
    prompt: str  # rendered: earlier outputs are in it
    save: SaveArtifacts  # stores artifacts and findings with the run, before the step completes
    tenant_id: str = ""
    repos_root: str | None = None  # NYXFLOW_REPOS_ROOT: see nyxflow/repos.py
    sandbox: Sandbox = SANDBOXED  # where the tenant's commands run (NYXFLOW_COMMAND_SANDBOX)
    # The workflow's steps after this one: a scan refuses at once a repository that a later
    # review could not patch, rather than after every model call between them was paid for.
    later: Sequence[pb.Step] = ()

    async def repository(self) -> Path:
        """`params.path`: the top folder of a git work tree the run's tenant may read. A folder
        inside one is refused, naming the top: the review applies patches to a clone of the
        whole repository, so the scan must show the files as the patches will name them."""
        raw = self.params.get("path")
        if not isinstance(raw, str) or not raw:
            raise InvalidArgument("the repository's local path is required", field="params.path")
        folder = await asyncio.to_thread(
            readable_folder, raw, self.repos_root, self.tenant_id, "params.path"
        )
        found = await run(folder, *GIT, "rev-parse", "--show-toplevel", merge_stderr=False)
        top = found.output.strip()
        if found.code != 0 or not top:
            # git's reason: "dubious ownership … safe.directory" asks the operator for a setting.
            why = found.errors.strip()
            message = f"{folder} is not a git work tree" + (f": {why}" if why else "")
            raise InvalidArgument(message, field="params.path")
        if not await asyncio.to_thread(os.path.samefile, top, folder):
            raise InvalidArgument(
                f"{folder} is inside the repository {top}: give its top folder",
                field="params.path",
            )
        if self.repos_root:
            await self._git_within(folder)
        return folder

    async def _git_within(self, folder: Path) -> None:
        """The folder is the tenant's, but git reads what its `.git` leads to: a gitfile
        (`gitdir: <another tenant's>/.git`), a `.git` symlink, a linked work tree's common
        dir, `objects/info/alternates`, or a symlink inside the git dir. Each must lie in the
        tenant's folder too, or the scan would show (and the review patch) another's source."""
        found = await run(
            folder,
            *GIT,
            *("rev-parse", "--path-format=absolute", "--absolute-git-dir", "--git-common-dir"),
            *("--git-path", "objects"),
            merge_stderr=False,
        )
        places = found.output.splitlines()
        if found.code != 0 or len(places) != 3:
            why = found.errors.strip()
            message = f"{folder}'s git directory cannot be found" + (f": {why}" if why else "")
            raise InvalidArgument(message, field="params.path")
        assert self.repos_root is not None
        tenant = tenant_folder(self.repos_root, self.tenant_id)
        await asyncio.to_thread(_git_dirs_within, folder, places, tenant)


def _git_dirs_within(folder: Path, places: Sequence[str], tenant: str) -> None:
    """`places` (git dir, common dir, objects), the alternates they name, and every symlink
    in them, resolved: refused, naming the path, when one lies outside `tenant`."""
    tenant = os.path.realpath(tenant)
    git_dir, common_dir, objects = places
    pending = [(git_dir, "its git directory", -1), (common_dir, "its common git directory", -1)]
    pending.append((objects, "its git objects", 0))
    walked: list[str] = []
    borrowed: set[str] = set()  # objects directories read for alternates (a cycle is git's)
    while pending:
        place, what, depth = pending.pop(0)
        real = _inside(folder, place, what, tenant)
        # A symlink to a folder inside the tenant's may hold symlinks out of it (objects/pack
        # to a folder of links to another tenant's packs): the folders linked to are walked.
        tops = [real]
        while tops:
            top = tops.pop()
            if any(within(top, done) for done in walked):
                continue
            walked.append(top)
            for link in _symlinks(top):
                target = _inside(folder, link, "a symlink in its git directory", tenant)
                if os.path.isdir(target):
                    tops.append(target)
        if depth < 0 or real in borrowed:
            continue  # a git dir: only an objects directory names alternates
        borrowed.add(real)
        for alternate in _alternates(folder, real):
            if depth >= ALTERNATES_DEPTH:
                raise InvalidArgument(
                    f"{folder}'s git objects borrow through more than {ALTERNATES_DEPTH} "
                    f"alternates ({alternate})",
                    field="params.path",
                )
            pending.append((alternate, "an alternate of its git objects", depth + 1))


def _inside(folder: Path, place: str, what: str, tenant: str) -> str:
    real = os.path.realpath(place)
    if not within(real, tenant):
        raise InvalidArgument(
            f"{folder} leads out of this tenant's folder {tenant}: {what}, {place}"
            + (f" ({real})" if real != place else ""),
            field="params.path",
        )
    return real


def _symlinks(top: str) -> list[str]:
    """Every symlink under `top`, not followed (a directory's entry type: no stat each), but
    in `hooks/`: git never runs them here (GIT sets core.hooksPath), and a repository whose
    hook links to /usr/bin/true was refused for it."""
    found, folders = [], [top]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if folder == top and entry.name == "hooks":
                continue
            if entry.is_symlink():
                found.append(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)
    return found


def _alternates(folder: Path, place: str) -> list[str]:
    """The object directories `place/info/alternates` names (relative: to `place`), for a
    place that is an objects directory (else none)."""
    try:
        lines = Path(place, "info", "alternates").read_text(errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    named = []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith('"'):  # C-quoted by git: not read here, so not taken on trust
            raise InvalidArgument(
                f"{folder}'s git objects name a quoted alternate, {line[:200]}: give it unquoted",
                field="params.path",
            )
        named.append(os.path.join(place, line))
    return named


Tool = Callable[[ToolCall], Awaitable[str]]


async def echo(call: ToolCall) -> str:
    return call.prompt


def tools() -> dict[str, Tool]:
    # Imported here: the pipeline tools pull in git plumbing that plain workflows never need.
    from nyxflow_engine.tools.findings import collect_findings
    from nyxflow_engine.tools.patches import review_patches
    from nyxflow_engine.tools.repository import scan_repository

    return {
        "echo": echo,
        "scan_repository": scan_repository,
        "collect_findings": collect_findings,
        "review_patches": review_patches,
    }


def tool_for(name: str) -> Tool:
    known = tools()
    tool = known.get(name)
    if tool is None:
        raise InvalidArgument(f"unknown tool {name!r} (one of {', '.join(known)})", field="tool")
    return tool
