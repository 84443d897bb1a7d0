"""`scan_repository`: the files, languages and sizes of a local git work tree, and, for the
pipelines, a bounded sample of file contents as fan-out items.

The sample prefers recently changed files, then small ones, until `max_files` or `max_bytes`
is reached; every file left out is counted, so the report can say what it did not see.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from nyxflow.errors import InvalidArgument
from nyxflow_engine.tools.commands import run
from nyxflow_engine.tools.registry import ToolCall

LANGUAGES = {
    ".py": "Python", ".ts": "TypeScript", ".tsx": "TypeScript", ".js": "JavaScript",
    ".jsx": "JavaScript", ".go": "Go", ".rs": "Rust", ".java": "Java", ".rb": "Ruby",
    ".c": "C", ".h": "C", ".cpp": "C++", ".cs": "C#", ".kt": "Kotlin", ".swift": "Swift",
    ".php": "PHP", ".md": "Markdown", ".sql": "SQL", ".sh": "Shell", ".yaml": "YAML",
    ".yml": "YAML", ".json": "JSON", ".toml": "TOML", ".html": "HTML", ".css": "CSS",
}  # fmt: skip
RECENT_COMMITS = 200  # how far back "recently changed" looks


async def git(path: Path, *args: str) -> str:
    done = await run(path, "git", "-C", str(path), *args, merge_stderr=False)
    if done.code != 0:
        message = done.errors.strip()
        raise InvalidArgument(f"{path} is not a git work tree: {message}", field="params.path")
    return done.output


async def git_files(path: Path) -> list[str]:
    return [name for name in (await git(path, "ls-files", "-z")).split("\0") if name]


async def recency(path: Path) -> dict[str, int]:
    """File → commit time of its last change among the recent commits (absent: older)."""
    try:
        log = await git(path, "log", f"-n{RECENT_COMMITS}", "--format=%x00%ct", "--name-only")
    except InvalidArgument:
        return {}  # a repository without commits yet
    when: dict[str, int] = {}
    for block in log.split("\0"):
        lines = [line for line in block.splitlines() if line.strip()]
        if lines and lines[0].isdigit():
            for name in lines[1:]:
                when.setdefault(name, int(lines[0]))
    return when


async def scan_repository(call: ToolCall) -> str:
    params = call.params
    raw = params.get("path")
    if not isinstance(raw, str) or not raw:
        raise InvalidArgument("the repository's local path is required", field="params.path")
    root = await asyncio.to_thread(_directory, raw)
    names = await git_files(root)
    report = await asyncio.to_thread(_report, root, names)
    group = params.get("group")
    if group in ("file", "directory"):
        limits = Limits.of(params)
        report.update(await asyncio.to_thread(_sample, root, names, await recency(root), limits))
        report["items"] = _items(report.pop("sample"), str(group))
    return json.dumps(report, indent=2)


class Limits:
    def __init__(self, files: int, total: int, per_file: int) -> None:
        self.files, self.total, self.per_file = files, total, per_file

    @classmethod
    def of(cls, params: dict[str, Any]) -> Limits:
        def positive(key: str, default: int) -> int:
            value = params.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgument("must be a positive integer", field=f"params.{key}")
            return value

        return cls(
            positive("max_files", 40), positive("max_bytes", 200_000),
            positive("max_file_bytes", 20_000),
        )  # fmt: skip


def _directory(raw: str) -> Path:
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory", field="params.path")
    return root


def _report(root: Path, names: list[str]) -> dict[str, Any]:
    files = []
    languages: Counter[str] = Counter()
    total = 0
    for name in names:
        file = root / name
        size = file.stat().st_size if file.is_file() else 0
        language = LANGUAGES.get(file.suffix.lower(), "other")
        languages[language] += 1
        total += size
        files.append({"path": name, "size": size, "language": language})
    return {
        "path": str(root),
        "files": len(files),
        "bytes": total,
        "languages": dict(languages.most_common()),
        "listing": files,
    }


def _sample(
    root: Path, names: list[str], changed: dict[str, int], limits: Limits
) -> dict[str, Any]:
    candidates = []
    for name in names:
        file = root / name
        if file.is_file() and LANGUAGES.get(file.suffix.lower()) not in (None, "JSON"):
            candidates.append((-changed.get(name, 0), file.stat().st_size, name))
    candidates.sort()  # most recently changed first, then the smallest
    sample: list[dict[str, Any]] = []
    used = 0
    truncated: list[str] = []
    for _, size, name in candidates:
        if len(sample) >= limits.files or used >= limits.total:
            break
        budget = min(limits.per_file, limits.total - used)
        content = (root / name).read_bytes()[:budget].decode("utf-8", errors="replace")
        if size > budget:
            truncated.append(name)
        sample.append({"path": name, "content": content})
        used += len(content.encode())
    seen = {s["path"] for s in sample}
    left = [name for _, _, name in candidates if name not in seen]
    return {
        "sample": sample,
        "left_out": {
            "files": len(left) + (len(names) - len(candidates)),
            "not_source": len(names) - len(candidates),
            "over_budget": left[:50],
            "truncated": truncated,
            "limits": {"files": limits.files, "bytes": limits.total},
        },
    }


def _items(sample: list[dict[str, Any]], group: str) -> list[dict[str, Any]]:
    """Fan-out items: one per file, or one per directory holding its sampled files."""
    if group == "file":
        return [{"title": s["path"], **s} for s in sample]
    modules: dict[str, list[dict[str, Any]]] = {}
    for s in sample:
        modules.setdefault(str(PurePosixPath(s["path"]).parent), []).append(s)
    return [{"title": name, "files": files} for name, files in sorted(modules.items())]
