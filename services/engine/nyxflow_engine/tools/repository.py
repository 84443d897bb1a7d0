"""`scan_repository`: the files, languages and sizes of a local git repository as its HEAD
has them (see `head.py`), and, for the pipelines, a bounded sample of file contents as fan-out
items. Uncommitted changes are named, not shown: patches are checked against HEAD.

The sample prefers recently changed files, then small ones, until `max_files` or `max_bytes`
is reached; every file left out is counted, so the report can say what it did not see.
The scan's output is bounded too, for it is written twice (the step's output and its
step_completed event): it lists the first LISTING files and counts every folder's files,
whatever the repository's size.

With `params.summary`, the tool scans nothing: it answers a compact summary of the scan given
as its prompt (counts, languages, the largest folders, what was sampled and left out, each list
capped), the same size for ten files or a million, and without the sampled contents the
analysis already had. That is what a report's prompt embeds, never the whole scan.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from nyxflow.constants import TOOL, scan_limit
from nyxflow.errors import InvalidArgument
from nyxflow_engine.tools.head import Entry, Head, contents, git, head_of, uncommitted
from nyxflow_engine.tools.registry import ToolCall

LANGUAGES = {
    ".py": "Python", ".ts": "TypeScript", ".tsx": "TypeScript", ".js": "JavaScript",
    ".jsx": "JavaScript", ".go": "Go", ".rs": "Rust", ".java": "Java", ".rb": "Ruby",
    ".c": "C", ".h": "C", ".cpp": "C++", ".cs": "C#", ".kt": "Kotlin", ".swift": "Swift",
    ".php": "PHP", ".md": "Markdown", ".sql": "SQL", ".sh": "Shell", ".yaml": "YAML",
    ".yml": "YAML", ".json": "JSON", ".toml": "TOML", ".html": "HTML", ".css": "CSS",
}  # fmt: skip
RECENT_COMMITS = 200  # how far back "recently changed" looks
LISTED = 50  # names a summary lists at the most in each of its lists
# The output's bounds (see the module's docstring): 150,000 files listed whole made a write
# of 83.6 MiB, more than a message holds, which failed the run.
LISTING = 1_000
FOLDERS = 200


async def recency(path: Path, commit: str) -> dict[str, int]:
    """File → commit time of its last change among the recent commits before `commit` (the
    one the scan read, wherever HEAD has moved since) (absent: older)."""
    try:
        # -z: names as they are. Without it git quotes any name outside ASCII ("\303\251.py"),
        # which then matched no file, so such files never counted as recently changed.
        log = await git(
            path,
            "log",
            "-z",
            f"-n{RECENT_COMMITS}",
            "--format=%x01%ct",
            "--name-only",
            commit,
            "--",
        )
    except InvalidArgument:
        return {}  # a repository without commits yet
    return await asyncio.to_thread(_last_changes, log)


def _last_changes(log: str) -> dict[str, int]:
    r"""Parses `git log -z --format=%x01%ct --name-only`: each commit is "\x01<time>", then
    its names, NUL-terminated, the first behind the newline that ends the header."""
    when: dict[str, int] = {}
    time, first = 0, False
    for token in log.split("\0"):
        if token.startswith("\x01"):
            time, first = int(token[1:]), True
            continue
        if first and token.startswith("\n"):
            token = token[1:]
        first = False
        if token:
            when.setdefault(token, time)
    return when


async def scan_repository(call: ToolCall) -> str:
    """What takes a while on a large tree (parsing, sorting, JSON) runs in a thread: on the
    event loop it would hold every other run's events and heartbeats up meanwhile."""
    params = call.params
    if params.get("summary") is True:
        return await asyncio.to_thread(_summary_text, call.prompt)
    group = params.get("group")
    limits = Limits.of(params) if group in ("file", "directory") else None
    root = await call.repository()
    head = await head_of(root)
    if not head.commit and (review := _review_of(call)):
        raise InvalidArgument(
            f"{root} has no commits yet: step {review!r} reviews patches against HEAD; "
            "commit the files first",
            field="params.path",
        )
    # Against the commit read above: HEAD read again could be another (and costs as much).
    changed = await uncommitted(root, head) if head.commit else []
    report = await asyncio.to_thread(_report, root, head, changed)
    if limits is not None:
        when = await recency(root, head.commit) if head.commit else {}
        chosen, left_out = await asyncio.to_thread(_sample, head, when, limits)
        most = max((budget for _, budget in chosen), default=0)
        blobs = await contents(root, [entry for entry, _ in chosen], most)
        sample = [_sampled(e.path, blobs[e.path], budget, e.size) for e, budget in chosen]
        report["left_out"] = left_out
        report["items"] = _items(sample, str(group))
    return await asyncio.to_thread(json.dumps, report, indent=2)


def _review_of(call: ToolCall) -> str | None:
    """The name of a later step that reviews patches of this repository: without a commit
    it will fail (there is no HEAD to patch), after the models in between were paid for."""
    path = call.params.get("path")
    for step in call.later:
        if step.kind == TOOL and step.spec.tool == "review_patches":
            try:
                params = json.loads(step.params_json or "{}")
            except json.JSONDecodeError:
                continue
            if isinstance(params, dict) and _same_path(params.get("path"), path):
                return step.name
    return None


def _same_path(one: Any, other: Any) -> bool:
    if not isinstance(one, str) or not isinstance(other, str):
        return False
    return os.path.normpath(os.path.expanduser(one)) == os.path.normpath(os.path.expanduser(other))


def _summary_text(scan_output: str) -> str:
    return json.dumps(summary(scan_output), indent=2)


class Limits:
    def __init__(self, files: int, total: int, per_file: int) -> None:
        self.files, self.total, self.per_file = files, total, per_file

    @classmethod
    def of(cls, params: dict[str, Any]) -> Limits:
        return cls(
            scan_limit(params, "max_files", 40), scan_limit(params, "max_bytes", 200_000),
            scan_limit(params, "max_file_bytes", 20_000),
        )  # fmt: skip


def _report(root: Path, head: Head, changed: list[str]) -> dict[str, Any]:
    languages: Counter[str] = Counter()
    folders: Counter[str] = Counter()
    listing: list[dict[str, Any]] = []
    for entry in head.files:
        language = _language(entry.path) or "other"
        languages[language] += 1
        folders[str(PurePosixPath(entry.path).parent)] += 1
        if len(listing) < LISTING:
            listing.append({"path": entry.path, "size": entry.size, "language": language})
    report: dict[str, Any] = {
        "path": str(root),
        "head": head.commit or None,  # what is shown, and what patches are checked against
        "files": len(head.files),
        "bytes": sum(entry.size for entry in head.files),
        "languages": dict(languages.most_common()),
        "folders": {"count": len(folders), "largest": dict(folders.most_common(FOLDERS))},
        "listing": listing,
    }
    if len(head.files) > len(listing):
        report["listing_left_out"] = {
            "files": len(head.files) - len(listing),
            "note": f"only the first {LISTING} files are listed; every file is counted",
        }
    if changed:
        report["uncommitted"] = {
            "files": len(changed),
            "paths": changed[:50],
            "note": "not committed: shown (and patched) as HEAD has them, without the changes",
        }
    if head.skipped:
        report["skipped"] = {kind: names[:50] for kind, names in head.skipped.items()}
    return report


def _language(path: str) -> str | None:
    return LANGUAGES.get(PurePosixPath(path).suffix.lower())


def _sample(
    head: Head, changed: dict[str, int], limits: Limits
) -> tuple[list[tuple[Entry, int]], dict[str, Any]]:
    """The files to show, each with its byte budget, and what is left out."""
    candidates = [
        (-changed.get(e.path, 0), e.size, e.path, e)
        for e in head.files
        if _language(e.path) not in (None, "JSON")
    ]
    candidates.sort(key=lambda c: c[:3])  # most recently changed first, then the smallest
    chosen: list[tuple[Entry, int]] = []
    used = 0
    truncated: list[str] = []
    for _, size, name, entry in candidates:
        if len(chosen) >= limits.files or used >= limits.total:
            break
        budget = min(limits.per_file, limits.total - used)
        if size > budget:
            truncated.append(name)
        chosen.append((entry, budget))
        used += min(size, budget)
    seen = {entry.path for entry, _ in chosen}
    left = [name for _, _, name, _ in candidates if name not in seen]
    not_source = len(head.files) - len(candidates)
    return chosen, {
        "files": len(left) + not_source,
        "not_source": not_source,
        "over_budget": left[:50],
        "truncated": truncated,
        "limits": {"files": limits.files, "bytes": limits.total},
    }


def _sampled(path: str, head: bytes, budget: int, size: int) -> dict[str, Any]:
    """A file's content as the model sees it (`head`: at least its first `budget` bytes, of
    `size`); cut to its budget, it says so and how much is left out, or the model takes the
    cut for the file's end (and writes hunks there)."""
    sample: dict[str, Any] = {
        "path": path,
        "content": head[:budget].decode("utf-8", errors="replace"),
    }
    if size > budget:
        sample["truncated"] = {"shown_bytes": budget, "file_bytes": size}
    return sample


def _items(sample: list[dict[str, Any]], group: str) -> list[dict[str, Any]]:
    """Fan-out items: one per file, or one per directory holding its sampled files."""
    if group == "file":
        return [{"title": s["path"], **s} for s in sample]
    modules: dict[str, list[dict[str, Any]]] = {}
    for s in sample:
        modules.setdefault(str(PurePosixPath(s["path"]).parent), []).append(s)
    return [{"title": name, "files": files} for name, files in sorted(modules.items())]


def summary(scan_output: str) -> dict[str, Any]:
    """A scan's facts in a size that does not grow with the repository (see the module)."""
    try:
        scan = json.loads(scan_output)
    except json.JSONDecodeError:
        scan = None
    if not isinstance(scan, dict):
        raise InvalidArgument("the prompt must be a repository scan's output", field="prompt")
    shown = [file for item in scan.get("items", []) for file in item.get("files", [item])]
    brief = {key: scan[key] for key in ("path", "head", "files", "bytes", "languages")}
    brief["folders"] = _folders(scan)
    brief["sampled"] = {"files": len(shown), "paths": _capped([file["path"] for file in shown])}
    for key in ("left_out", "listing_left_out", "uncommitted", "skipped"):
        if key in scan:
            brief[key] = _capped(scan[key])
    return brief


def _folders(scan: dict[str, Any]) -> dict[str, Any]:
    """Counted by the scan (it lists only some files); a scan stored before, from its list."""
    if isinstance(scan.get("folders"), dict):
        largest = list(scan["folders"].get("largest", {}).items())[:LISTED]
        return {"count": scan["folders"].get("count", 0), "largest": dict(largest)}
    folders = Counter(str(PurePosixPath(f["path"]).parent) for f in scan.get("listing", []))
    return {"count": len(folders), "largest": dict(folders.most_common(LISTED))}


def _capped(value: Any) -> Any:
    """Every list in `value` cut to LISTED entries, with how many there were."""
    if isinstance(value, dict):
        return {key: _capped(entry) for key, entry in value.items()}
    if isinstance(value, list) and len(value) > LISTED:
        return [*value[:LISTED], f"… and {len(value) - LISTED} more"]
    return value
