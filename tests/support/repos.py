"""A small real git repository with a planted bug, and the diffs a model might propose."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CALC = (
    "def add(a, b):\n    return a - b  # planted: subtracts\n\n\ndef double(x):\n    return x * 2\n"
)
UTIL = "def shout(text):\n    return text.upper()\n"
TESTS = (
    "from calc import add, double\n\n\n"
    "def test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_double():\n    assert double(4) == 8\n"
)
GOOD_DIFF = "\n".join(
    [
        "```diff",
        "--- a/calc.py",
        "+++ b/calc.py",
        "@@ -1,5 +1,5 @@",
        " def add(a, b):",
        "-    return a - b  # planted: subtracts",
        "+    return a + b",
        " ",
        " ",
        " def double(x):",
        "```",
    ]
)
BROKEN_DIFF = """```diff
--- a/util.py
+++ b/util.py
@@ -1,2 +1,2 @@
 def shout(words):
-    return words.upper()
+    return words.upper() + "!"
```"""
FINDINGS = (
    '[{"file": "calc.py", "line": 2, "severity": "high", "category": "bug", '
    '"message": "add subtracts its arguments"}]'
)
TEST_COMMAND = f"{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    )
    return done.stdout


def planted_repo(root: Path) -> Path:
    repo = root / "shop"
    repo.mkdir()
    (repo / "calc.py").write_text(CALC)
    (repo / "util.py").write_text(UTIL)
    (repo / "test_calc.py").write_text(TESTS)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "start")
    return repo


def model_replies() -> dict[str, str]:
    """The local provider's scripted answers, chosen by what each prompt contains."""
    return {  # first match wins: a module item holds its files' paths too
        '"title": "."': FINDINGS,
        '"path": "calc.py"': GOOD_DIFF,
        '"path": "util.py"': BROKEN_DIFF,
    }
