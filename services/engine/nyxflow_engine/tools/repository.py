"""`scan_repository`: the files, languages and sizes of a local git work tree."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from nyxflow.errors import InvalidArgument

LANGUAGES = {
    ".py": "Python", ".ts": "TypeScript", ".tsx": "TypeScript", ".js": "JavaScript",
    ".jsx": "JavaScript", ".go": "Go", ".rs": "Rust", ".java": "Java", ".rb": "Ruby",
    ".c": "C", ".h": "C", ".cpp": "C++", ".cs": "C#", ".kt": "Kotlin", ".swift": "Swift",
    ".php": "PHP", ".md": "Markdown", ".sql": "SQL", ".sh": "Shell", ".yaml": "YAML",
    ".yml": "YAML", ".json": "JSON", ".toml": "TOML", ".html": "HTML", ".css": "CSS",
}  # fmt: skip


async def git_files(path: Path) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        "git", "-C", str(path), "ls-files", "-z",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode != 0:
        message = err.decode(errors="replace").strip()
        raise InvalidArgument(f"{path} is not a git work tree: {message}", field="params.path")
    return [name for name in out.decode().split("\0") if name]


async def scan_repository(params: dict[str, Any], _prompt: str) -> str:
    raw = params.get("path")
    if not isinstance(raw, str) or not raw:
        raise InvalidArgument("the repository's local path is required", field="params.path")
    root = await asyncio.to_thread(_directory, raw)
    return await asyncio.to_thread(_report, root, await git_files(root))


def _directory(raw: str) -> Path:
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory", field="params.path")
    return root


def _report(root: Path, names: list[str]) -> str:
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
    report = {
        "path": str(root),
        "files": len(files),
        "bytes": total,
        "languages": dict(languages.most_common()),
        "listing": files,
    }
    return json.dumps(report, indent=2)
