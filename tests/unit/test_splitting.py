"""Splitting an output into fan-out items (and a plan into implementation prompts): a repository
scan whose files hold markdown code fences, a model's answer in a fenced block, and headings
that are not headings because they sit in a code block."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from nyxflow.errors import InvalidArgument
from nyxflow.v1 import common_pb2 as pb
from nyxflow_engine.splitting import split_items
from nyxflow_engine.steps.generation import generated_specs
from nyxflow_engine.tools.registry import ToolCall
from nyxflow_engine.tools.repository import scan_repository
from tests.support.repos import git, planted_repo

README = "# shop\n\nInstall:\n\n```sh\npip install shop\n```\n\nThen ```run``` it.\n"


async def _ignore(_: Sequence[pb.Artifact], __: Sequence[pb.Finding]) -> None:
    return None


async def test_a_scan_of_files_with_code_fences_splits_into_its_items(tmp_path: Path) -> None:
    repo = planted_repo(tmp_path)
    (repo / "README.md").write_text(README)
    git(repo, "add", "README.md")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "readme")
    scan = await scan_repository(ToolCall({"path": str(repo), "group": "file"}, "", _ignore))

    items = split_items(scan, "json")

    assert sorted(i.heading for i in items) == ["README.md", "calc.py", "test_calc.py", "util.py"]
    readme = next(json.loads(i.text) for i in items if i.heading == "README.md")
    assert readme["content"] == README


def test_a_fenced_answer_is_read_from_its_block() -> None:
    answer = 'Here they are:\n\n```json\n["a", "b ``` c"]\n```\nDone.'

    assert [i.text for i in split_items(answer, "json")] == ["a", "b ``` c"]


def test_text_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        split_items("```json\n[1, 2\n```", "json")
    assert refused.value.field == "split" and "not JSON" in str(refused.value)


PLAN = """Intro the split drops.
## Step 1: install
Run this first:
```bash
# install the dependencies
pip install -r requirements.txt
```
## Step 2: test
~~~~python
# a comment
~~~
## not a heading: a ~~~ shorter than the opening does not close it
~~~~
Run the tests.
"""


def test_a_hash_line_in_a_code_block_is_no_heading() -> None:
    """A shell or Python comment in a plan's code block was an item of its own (the top-most
    "heading" level present), and everything before it was dropped."""
    items = split_items(PLAN, "headings")

    assert [i.heading for i in items] == ["Step 1: install", "Step 2: test"]
    assert items[0].text.endswith("pip install -r requirements.txt\n```")
    assert items[1].text.endswith("Run the tests.")


@pytest.mark.parametrize(
    "fence",
    [
        "   ```sh\n   # in a list item\n   ```",  # indented under a list item
        "````md\n# a heading quoted in markdown\n```\n# still quoted\n````",
    ],
)
def test_fences_in_list_items_and_longer_fences_hide_their_hash_lines(fence: str) -> None:
    text = f"## One\n1. Do this:\n{fence}\n## Two\nend"

    assert [i.heading for i in split_items(text, "headings")] == ["One", "Two"]


def test_backticks_within_a_line_open_no_fence() -> None:
    # An info string with a backtick makes no fence (CommonMark): the split goes on.
    text = "## One\n```inline``` code\n## Two\n"

    assert [i.heading for i in split_items(text, "headings")] == ["One", "Two"]


def test_a_fence_never_closed_runs_to_the_end() -> None:
    text = "## One\n```\n# a comment\n## also quoted\n"

    assert [i.heading for i in split_items(text, "headings")] == ["One"]


def test_headings_only_in_code_blocks_are_no_headings() -> None:
    with pytest.raises(InvalidArgument) as refused:
        split_items("```\n# comment\n```\n", "headings")
    assert refused.value.field == "split"


def test_a_heading_ending_in_hash_keeps_it() -> None:
    """CommonMark: a closing sequence of #s follows a space; "C#" is the heading's text."""
    text = "## C#\n## F# ##\n## Closing ###\n"

    assert [i.heading for i in split_items(text, "headings")] == ["C#", "F#", "Closing"]


def test_a_plan_with_a_shell_comment_generates_a_prompt_per_step() -> None:
    synthesis = pb.Step(id="s", name="Synthesis", order=0, output=PLAN, kind="synthesis")

    specs = generated_specs(synthesis, [synthesis], False)

    assert [s.name for s in specs] == [
        "Implementation prompt 1: Step 1: install",
        "Implementation prompt 2: Step 2: test",
    ]


@pytest.mark.parametrize(
    "answer",
    [
        'Here you go:\r\n```json\r\n["a", "b"]\r\n```\r\n',
        'Here you go:\n```JSON\n["a", "b"]\n```\n',
    ],
)
def test_a_fenced_answer_with_crlf_or_an_upper_case_language_is_read(answer: str) -> None:
    assert [i.text for i in split_items(answer, "json")] == ["a", "b"]


def test_blank_json_items_are_not_items() -> None:
    # As blank lines in lines mode: nothing to send to the model.
    assert [i.text for i in split_items('["a", "", "   ", "b"]', "json")] == ["a", "b"]


def test_headings_indented_up_to_three_spaces_split_and_four_make_code() -> None:
    text = "  ## One\nfirst\n   ## Two\nsecond\n    ## code, not a heading\n"

    items = split_items(text, "headings")

    assert [i.heading for i in items] == ["One", "Two"]
    assert items[1].text.endswith("    ## code, not a heading")


def test_underlined_headings_split_at_their_level() -> None:
    """Setext headings: `===` under a line makes level 1, `---` level 2. A plan written that
    way was one item, or split only at the few `##` headings it also had."""
    text = (
        "Plan\n====\nintro\n\n"
        "Step 1: install\n---------------\nrun pip\n\n"
        "Step 2: test\n---\nrun pytest\n### detail\nmore\n"
    )

    items = split_items(text, "headings")

    assert [i.heading for i in items] == ["Plan"]  # the top-most level present
    steps = split_items(text.split("intro\n\n", 1)[1], "headings")
    assert [i.heading for i in steps] == ["Step 1: install", "Step 2: test"]
    assert steps[0].text == "Step 1: install\n---------------\nrun pip"
    assert steps[1].text.endswith("### detail\nmore")


@pytest.mark.parametrize(
    "text",
    [
        "## One\nend\n\n---\n\n## Two\n",  # a break after a blank line
        "## One\n- an item\n---\n## Two\n",  # a break after a list item
        "## One\n```\ncode\n---\n```\n## Two\n",  # in a code block
        "## One\n    code\n---\n## Two\n",  # after indented code
    ],
)
def test_a_dash_line_that_underlines_no_text_is_no_heading(text: str) -> None:
    assert [i.heading for i in split_items(text, "headings")] == ["One", "Two"]


# Markdown ends a line at LF, CR or CRLF only; str.splitlines also broke at these, so a line
# of code holding one became two items, and an item reached its prompt rewritten.
NOT_LINE_ENDS = ["\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", NOT_LINE_ENDS)
def test_only_markdown_line_ends_end_a_line_item(char: str) -> None:
    text = f'print("a{char}b")\r\nsecond\rthird\n'
    assert [i.text for i in split_items(text, "lines")] == [f'print("a{char}b")', "second", "third"]


@pytest.mark.parametrize("char", NOT_LINE_ENDS)
def test_a_heading_item_is_its_text_as_written(char: str) -> None:
    first = f'## Parser\r\nconst sep = "a{char}b";\r\n\r\none{char}## Not a heading'
    second = "## Wiring\nwire it"
    items = split_items(f"intro\n{first}\n\n{second}\n", "headings")
    assert [(i.heading, i.text) for i in items] == [("Parser", first), ("Wiring", second)]


# Held on the engine's loop, a split or a verdict read in time quadratic in a run of blanks
# stopped every run of that engine, heartbeats included, for minutes. A megabyte of blanks
# takes milliseconds now: in a process of its own, so that a regression fails this test
# alone, in its time limit, rather than hanging the whole run.
LINEAR_S = 20


def _finishes(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=LINEAR_S
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_heading_line_with_a_long_run_of_blanks_is_split_in_linear_time() -> None:
    headings = _finishes(
        "from nyxflow_engine.splitting import split_items\n"
        "text = '## One' + ' ' * 1_000_000 + 'note\\n## Two ##\\nbody\\n## C#\\n## ###\\n'\n"
        "print([i.heading for i in split_items(text, 'headings')][1:])"
    )
    assert headings.strip() == "['Two', 'C#', '###']"


def test_a_verdict_after_a_long_run_of_blank_lines_is_read_in_linear_time() -> None:
    verdict = _finishes(
        "from nyxflow_engine.steps.consistency import VERDICT\n"
        "text = '- first\\n' + ' \\n' * 500_000 + '- one more\\n  verdict: Inconsistent\\n'\n"
        "print(VERDICT.search(text).group(1))"
    )
    assert verdict.strip() == "Inconsistent"


def test_a_verdict_word_on_the_line_after_its_label_is_read_in_linear_time() -> None:
    verdict = _finishes(
        "from nyxflow_engine.steps.consistency import VERDICT\n"
        "text = ' \\n' * 200_000 + ('VERDICT:' + ' \\n' * 50_000) * 4\n"
        "text += 'VERDICT:\\r\\n consistent\\n'\n"
        "print(VERDICT.search(text).group(1))"
    )
    assert verdict.strip() == "consistent"
