"""Where a tenant's repositories may be: with `NYXFLOW_REPOS_ROOT` set, inside
`<root>/<tenant id>/` only, so that one tenant cannot have the pipelines read (and send to a
model) another's source, or any other folder of the engine's machine.

Runs checks the path as written when a repository is added (its file system may not be the
engine's); the engine checks it again with symlinks resolved, on the folder it will read.
Unset, any absolute path is taken: one team on its own machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from nyxflow.errors import InvalidArgument


def root_folder(root: str) -> str:
    """`NYXFLOW_REPOS_ROOT` as every reader takes it: `~` expanded, absolute (a relative one
    is the working folder's), normalised. As written, a relative root could never hold an
    absolute path, and `~/repos` was no folder to wall in."""
    return os.path.abspath(os.path.expanduser(root))


def tenant_folder(root: str, tenant_id: str) -> str:
    return os.path.join(root_folder(root), tenant_id)


def within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def re_rooted(path: str, root: str, from_tenant: str, to_tenant: str) -> str | None:
    """`path` moved from one tenant's folder to the same place in another's; None when it
    is not inside the first (it was added before the root was set)."""
    old = tenant_folder(root, from_tenant)
    if not os.path.isabs(path) or not within(path, old):
        return None
    return os.path.normpath(
        os.path.join(tenant_folder(root, to_tenant), os.path.relpath(path, old))
    )


def written_path(raw: str, root: str | None, tenant_id: str, field: str) -> str:
    """`raw` as it will be stored: absolute, `~` expanded, `.` and `..` resolved; with a
    root, relative paths are the tenant's folder's, and nothing may lie outside it."""
    path = os.path.expanduser(raw)
    folder = tenant_folder(root, tenant_id) if root else None
    if not os.path.isabs(path):
        if folder is None:
            raise InvalidArgument("must be an absolute path", field=field)
        path = os.path.join(folder, path)
    path = os.path.normpath(path)
    if folder is not None and not within(path, folder):
        raise InvalidArgument(f"must be inside this tenant's folder {folder}", field=field)
    return path


def readable_folder(raw: str, root: str | None, tenant_id: str, field: str) -> Path:
    """The folder a tool may read, its symlinks resolved: refused outside the tenant's."""
    path = Path(written_path(raw, root, tenant_id, field))
    if root:
        real, folder = path.resolve(), Path(tenant_folder(root, tenant_id)).resolve()
        if not within(str(real), str(folder)):
            raise InvalidArgument(
                f"must be inside this tenant's folder {folder} (symlinks resolved)", field=field
            )
        path = real
    if not path.is_dir():
        raise InvalidArgument(f"{path} is not a directory", field=field)
    return path
