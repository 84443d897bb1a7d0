"""Deep templates: YAML nested past any template's need and alias bombs through the gateway's
import route, and prompts of nested, repeated and unclosed `{{ … }}` through CreateWorkflow.
Each is a clear 400 / INVALID_ARGUMENT naming its field, or is taken, within the call's
deadline: never a 500, never a hang, and the gateway's memory stays bounded."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nyxflow.errors import from_rpc_error
from nyxflow.templates import MAX_DEPTH
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2, runs_pb2_grpc
from nyxflow_gateway.routes.workflows import MAX_TEMPLATE_BYTES
from tests.fuzz.conftest import CALL_TIMEOUT_S, FUZZ, kw
from tests.fuzz.test_limits import http_workflow_count
from tests.support.inprocess import API_KEY
from tests.support.processes import ProcessStack
from tests.unit.test_templates import LAUGHS

HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/yaml"}
HEAD = "name: deep\nsteps:\n  - name: a\n    provider: local\n"
MB = 1024 * 1024


def fill(prefix: str, unit: str, suffix: str = "") -> str:
    """`prefix`, then `unit` as often as fits under the import limit, then `suffix`."""
    room = MAX_TEMPLATE_BYTES - len((prefix + suffix).encode()) - 16
    return prefix + unit * (room // len(unit.encode())) + suffix


def block(depth: int) -> str:
    """Mappings nested `depth` levels by indentation alone."""
    return "".join(f"{'  ' * (i + 3)}k{i}:\n" for i in range(depth)) + "  " * (depth + 3) + "v\n"


# (name, template, the field its 400 names)
DEEP_YAML = [
    (
        "flow, one past the limit",
        HEAD + "    params: {d: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}\n",
    ),
    ("flow, 10,000 lists", HEAD + "    params: {d: " + "[" * 10_000 + "]" * 10_000 + "}\n"),
    ("flow, 10,000 maps", HEAD + "    params: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n"),
    ("flow, unclosed to the limit", fill(HEAD + "    params: ", "[")),
    ("flow, maps unclosed to the limit", fill(HEAD + "    params: ", "{a: ")),
    ("block, 40 levels", HEAD + "    params:\n" + block(40)),
    ("block, 400 levels", HEAD + "    params:\n" + block(400)),
    ("billion laughs", LAUGHS),
    ("aliases to the limit", fill("x: &x [1]\ny: [", "*x, ", "*x]\n" + HEAD)),
    ("merge keys", "b: &b {a: 1}\nc: &c {<<: *b, d: 2}\n" + HEAD + "    params: {<<: *c}\n"),
    ("a self-referencing alias", "a: &a [*a]\n" + HEAD),
    ("anchors with no alias, deep", "a: &a " + "[" * 100 + "]" * 100 + "\n" + HEAD),
]
DEEP_PROMPTS = [
    ("unclosed {{ to the limit", fill(HEAD + "    prompt: '", "{{", "'\n")),
    ("unclosed '{{ steps.' to the limit", fill(HEAD + "    prompt: '", "{{ steps.", "'\n")),
    ("{{ {{ … }} nested", HEAD + "    prompt: '" + "{{ " * 10_000 + "}} " * 10_000 + "'\n"),
]


def peak_kb(stack: ProcessStack, name: str) -> int:
    """The process's peak resident memory (VmHWM), in kB."""
    status = Path(f"/proc/{stack.procs[name].pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))


@pytest.fixture
async def http(sqlite_stack: ProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=sqlite_stack.base_url, headers=HEADERS, timeout=CALL_TIMEOUT_S + 5
    ) as client:
        yield client


@pytest.mark.parametrize(
    ("template", "field"),
    [pytest.param(t, "template", id=name) for name, t in DEEP_YAML]
    + [pytest.param(t, "steps[0].prompt", id=name) for name, t in DEEP_PROMPTS],
)
async def test_deep_templates_are_answered_cleanly(
    http: httpx.AsyncClient, sqlite_stack: ProcessStack, template: str, field: str
) -> None:
    assert len(template.encode()) <= MAX_TEMPLATE_BYTES
    before, peak = await http_workflow_count(http), peak_kb(sqlite_stack, "gateway")
    started = time.monotonic()
    response = await http.post("/v1/workflows/import", content=template)
    assert time.monotonic() - started < CALL_TIMEOUT_S
    if field == "template":  # too deep, or an alias: always refused
        assert response.status_code == 400, response.text[:300]
    else:  # an unclosed `{{` is text; a `{{ … }}` naming nothing is refused
        assert response.status_code in (201, 400), response.text[:300]
    if response.status_code == 400:
        assert response.json()["error"]["field"] == field, response.text[:300]
        assert await http_workflow_count(http) == before
    # Refusing it costs the gateway far less than one expanded bomb (gigabytes).
    assert peak_kb(sqlite_stack, "gateway") - peak < 64 * 1024


# --- prompts of nested, repeated and unclosed references through CreateWorkflow ---------------

PIECES = st.sampled_from(
    [
        *["{{", "}}", "{{ ", " }}", "{", "}", "{{ steps.", "s0", ".output", ".output }}"],
        *["{{ item }}", '{{ "{{" }}', "steps.s0.output", "\n", " "],
    ]
)
PROMPTS = st.one_of(
    st.lists(PIECES, max_size=60).map("".join),
    st.tuples(PIECES, st.integers(1, 200_000)).map(lambda p: p[0] * p[1]),
    st.tuples(st.lists(PIECES, min_size=1, max_size=4), st.integers(1, 50_000)).map(
        lambda p: "".join(p[0]) * p[1]
    ),
)


@FUZZ
@given(prompt=PROMPTS, chain=st.integers(0, 499))
@example(prompt="{{" * 500_000, chain=0)
@example(prompt="{{ steps." * 100_000, chain=0)
@example(prompt="{{ " * 300_000 + "}}", chain=0)
@example(prompt="{{ steps.s498.output }}", chain=499)
# A long run of blanks inside one: read once per character before it, minutes for 1 MB.
@example(prompt="{{ a" + " " * 1_000_000 + "b }}", chain=0)
@example(prompt="{{ steps.s0" + " " * 1_000_000 + ".output }}", chain=0)
async def test_deep_prompts_answer_in_time(
    runs: runs_pb2_grpc.RunsStub, prompt: str, chain: int
) -> None:
    """Up to 499 steps before the fuzzed one (a workflow holds 500), each reading the one
    before it."""
    steps = [pb.StepSpec(name="s0", kind="llm", prompt="hi", provider="local")]
    steps += [
        pb.StepSpec(name=f"s{i}", kind="llm", prompt=f"{{{{ steps.s{i - 1}.output }}}}")
        for i in range(1, chain)
    ]
    steps.append(pb.StepSpec(name="last", kind="llm", prompt=prompt, provider="local"))
    request = runs_pb2.CreateWorkflowRequest(name="deep", steps=steps)
    started = time.monotonic()
    try:
        workflow = await runs.CreateWorkflow(request, **kw())
    except Exception as error:
        import grpc

        assert isinstance(error, grpc.aio.AioRpcError), error
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert from_rpc_error(error).field == f"steps[{len(steps) - 1}].prompt", error.details()
    else:
        assert workflow.steps[-1].prompt == prompt
    assert time.monotonic() - started < CALL_TIMEOUT_S / 2
