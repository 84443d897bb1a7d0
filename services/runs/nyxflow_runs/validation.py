"""Validation of what clients send, with the offending field named."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from nyxflow import constants as kinds
from nyxflow import events as ev
from nyxflow.errors import InvalidArgument, ResourceExhausted
from nyxflow.grpc_server import CHANNEL_OPTIONS
from nyxflow.references import REFERENCE, control_problem, expressions, name_problem, one_line
from nyxflow.repos import written_path
from nyxflow.v1 import common_pb2 as pb
from nyxflow.v1 import runs_pb2

MAX_NAME = 200
MAX_ALTERNATIVES = 8
MAX_CONTINUE = 8
MAX_MAX_TOKENS = 2**31 - 1  # the column's and the proto's int32
MAX_CONCURRENCY = 64
SPLITS = ("headings", "lines", "json")
GENERATES = ("implementation_prompt",)
# Kinds that keep N alternatives (llm.py runs them); the others make one output.
ALTERNATIVE_KINDS = (kinds.LLM, kinds.SYNTHESIS, kinds.IMPLEMENTATION_PROMPT)
# A field that some kinds only read: set on another, it would be ignored without a word.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "source": (kinds.FAN_OUT,),
    "split": (kinds.FAN_OUT,),
    "concurrency": (kinds.FAN_OUT,),
    "generates": (kinds.SYNTHESIS,),
    "reviews": (kinds.CONSISTENCY_CHECK,),
    "tool": (kinds.TOOL,),
}
# What a model call reads: a tool step calls none.
MODEL_FIELDS = ("persona", "provider", "model", "providers", "max_tokens", "auto_continue")


@dataclass(frozen=True)
class StepDraft:
    name: str
    kind: str
    prompt: str
    provider: str
    model: str
    params: dict[str, Any]
    max_tokens: int
    persona: str = ""
    alternatives: int = 1
    auto_continue: int = 0
    config: dict[str, Any] = field(default_factory=dict)


def require_id(value: str, field: str, limit: int | None = None) -> str:
    if not value:
        raise InvalidArgument("is required", field=field)
    if limit is not None and len(value) > limit:
        raise InvalidArgument(f"must be at most {limit} characters", field=field)
    return value


def no_nul(message: Message, at: str = "") -> None:
    """No string of a request may hold NUL: PostgreSQL text cannot store it (nor compare with
    it), so it is refused on every backend, with the field named, before any query."""
    for descriptor, value in message.ListFields():
        path = f"{at}.{descriptor.name}" if at else descriptor.name
        repeated = descriptor.is_repeated
        items = list(enumerate(value)) if repeated else [(None, value)]
        for i, item in items:
            where = path if i is None else f"{path}[{i}]"
            if descriptor.type == descriptor.TYPE_STRING and "\x00" in item:
                raise InvalidArgument("must not contain NUL characters", field=where)
            if descriptor.type == descriptor.TYPE_MESSAGE and isinstance(item, Message):
                no_nul(item, where)


def text(value: str, field: str, limit: int, *, required: bool = True) -> str:
    value = value.strip()
    if required and not value:
        raise InvalidArgument("is required", field=field)
    if len(value) > limit:
        raise InvalidArgument(f"must be at most {limit} characters", field=field)
    return value


def single_line(value: str, field: str) -> str:
    """A name shown or written on one line: a persona's (a step's `persona:`), a project's,
    a repository's owner and repo (a pipeline's workflow name)."""
    if problem := control_problem(value):
        raise InvalidArgument(problem, field=field)
    return value


def local_path(value: str, field: str, limit: int, root: str | None, tenant_id: str) -> str:
    """A folder on the engine's machine, as every tool will read it (repos.py): absolute,
    `~` expanded, `.`/`..` resolved, and inside the tenant's folder when there is a root."""
    value = text(value, field, limit, required=False)
    if not value:
        return value
    return fits(written_path(value, root, tenant_id, field), field, limit)


def command(value: str, field: str, limit: int) -> str:
    """A command line run without a shell (split as a POSIX shell would): refused now if it
    cannot be split, rather than when it is run, after every model call was paid for. Blank
    is none."""
    value = text(value, field, limit, required=False)
    try:
        shlex.split(value)
    except ValueError as error:
        raise InvalidArgument(f"cannot be split into arguments: {error}", field=field) from None
    return value


def fits(value: str, field: str, limit: int) -> str:
    """As given, no wider than its column (PostgreSQL refuses wider; SQLite keeps it)."""
    if len(value) > limit:
        raise InvalidArgument(f"must be at most {limit} characters", field=field)
    return value


SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")
# A tenant's id: a tenant is named by "id or slug", so a slug shaped like one could be
# another tenant's id (CreateApiKey for it would then reach that tenant).
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def slug(value: str, field: str) -> str:
    if not SLUG.fullmatch(value):
        raise InvalidArgument("lower-case letters, digits and '-', at most 100", field=field)
    if UUID.fullmatch(value):
        raise InvalidArgument(
            "must not be shaped like a tenant id (a UUID): tenants are named by id or slug",
            field=field,
        )
    return value


MAX_LEASE_TTL_S = 3600.0


def lease_ttl(value: float, field: str = "lease_ttl_s") -> float:
    """A lease is how long a dead engine holds its run; a caller's key may claim, so an hour
    at most, or it could hold a workflow `running` with no engine for as long as it liked."""
    positive(value, field)
    if value > MAX_LEASE_TTL_S:
        raise InvalidArgument(f"must be at most {MAX_LEASE_TTL_S:.0f} seconds", field=field)
    return value


def positive(value: float, field: str) -> float:
    if not (value > 0 and math.isfinite(value)):  # NaN and inf too: a lease must expire
        raise InvalidArgument("must be a positive number", field=field)
    return value


def workflow_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidArgument("is required", field="name")
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"must be at most {MAX_NAME} characters", field="name")
    return single_line(name, "name")


def fitted_name(*parts: str, keep_end: str = "") -> str:
    """A name made from other names (a copy's, a pipeline's), cut to the column: its parts
    may each be as long as a name, and PostgreSQL would refuse the whole (SQLite keeps it)."""
    name = "".join(parts)
    if len(name) + len(keep_end) <= MAX_NAME:
        return name + keep_end
    return name[: MAX_NAME - len(keep_end) - 1] + "…" + keep_end


def on_orphan(value: str) -> str:
    """Empty means the default, fail."""
    if not value:
        return ev.ON_ORPHAN_FAIL
    if value not in ev.ON_ORPHAN_POLICIES:
        raise InvalidArgument(
            f"must be one of {', '.join(ev.ON_ORPHAN_POLICIES)}, not {value[:40]!r}",
            field="on_orphan",
        )
    return value


def step_drafts(
    specs: Sequence[pb.StepSpec],
    personas: Collection[str],
    *,
    earlier: Collection[str] = (),
    generated: bool = False,
) -> list[StepDraft]:
    """Validate a workflow's steps in order; `earlier` names steps that precede them all.
    `generated`: the engine's, whose prompts quote a plan and are never rendered."""
    if not specs:
        raise InvalidArgument("a workflow needs at least one step", field="steps")
    if len(specs) > kinds.MAX_STEPS:
        raise InvalidArgument(f"at most {kinds.MAX_STEPS} steps", field="steps")
    drafts: list[StepDraft] = []
    seen: list[str] = list(earlier)
    for i, spec in enumerate(specs):
        draft = step_draft(spec, f"steps[{i}]", seen, personas, generated=generated)
        seen.append(draft.name)
        drafts.append(draft)
    return drafts


MAX_MESSAGE_BYTES = int(dict(CHANNEL_OPTIONS)["grpc.max_send_message_length"])
# What the answer holds beside the steps as drafted: the workflow's id, name, times, status
# and chain (ANSWER_ROOM), and each step's id, status and the tenant's chain (STEP_ROOM).
ANSWER_ROOM = 4 * 2**10
STEP_ROOM = 2 * 2**10


def answer_fits(steps: Sequence[pb.Step]) -> None:
    """The answer to a write of these steps (as convert.drafted makes them) can be sent: a
    workflow stored and then refused by the channel was unknown to its client, who made it
    again on every retry. Each step's prompt and params come back twice (the step's and its
    spec's), so a prompt of half a message is too long already."""
    total = ANSWER_ROOM
    for i, step in enumerate(steps):
        total += step.ByteSize() + STEP_ROOM
        if total > MAX_MESSAGE_BYTES:
            raise ResourceExhausted(
                f"the workflow's answer would outgrow a message ({MAX_MESSAGE_BYTES} bytes) by "
                "this step: its prompt and params come back twice, its persona's prompt once",
                field=_heaviest(step, f"steps[{i}]"),
            )


def _heaviest(step: pb.Step, at: str) -> str:
    """The step's field that weighs most in its answer."""
    weights = {
        "prompt": len(step.prompt.encode()),
        "params": len(step.params_json.encode()),
        "persona": len(step.system_prompt.encode()),
    }
    return f"{at}.{max(weights, key=weights.__getitem__)}"


def step_draft(
    spec: pb.StepSpec,
    at: str,
    earlier: Sequence[str],
    personas: Collection[str],
    *,
    generated: bool = False,
) -> StepDraft:
    # A generated step's name quotes a heading: one line, but it may hold a tab or an ESC.
    name = one_line(spec.name) if generated else spec.name.strip()
    if not name:
        raise InvalidArgument("is required", field=f"{at}.name")
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"must be at most {MAX_NAME} characters", field=f"{at}.name")
    if name in earlier:
        raise InvalidArgument(f"duplicate step name {name!r}", field=f"{at}.name")
    # No prompt reads a generated step's name (steps[i].reviews does): it may hold braces.
    if not generated and (problem := name_problem(name)):
        raise InvalidArgument(problem, field=f"{at}.name")
    if spec.kind not in kinds.STEP_KINDS:
        allowed = ", ".join(sorted(kinds.STEP_KINDS))
        raise InvalidArgument(f"unknown kind {spec.kind!r} (one of {allowed})", field=f"{at}.kind")
    _kind_fields(spec, at)
    if len(spec.model) > MAX_NAME:
        raise InvalidArgument(f"must be at most {MAX_NAME} characters", field=f"{at}.model")
    if spec.max_tokens < 0:
        raise InvalidArgument("must not be negative", field=f"{at}.max_tokens")
    if spec.persona and spec.persona not in personas:
        raise InvalidArgument(f"unknown persona {spec.persona!r}", field=f"{at}.persona")
    if not generated:  # the engine sends a generated prompt as it is: `{{` in it is text
        _references(spec, at, earlier)
    return StepDraft(
        name=name,
        kind=spec.kind,
        prompt=spec.prompt,
        provider=provider_name(spec.provider, f"{at}.provider") if spec.provider else "",
        model=spec.model,
        params=json_object(spec.params_json, f"{at}.params"),
        max_tokens=spec.max_tokens or kinds.default_max_tokens(spec.kind, name),
        persona=spec.persona,
        alternatives=bounded(spec.alternatives or 1, 1, MAX_ALTERNATIVES, f"{at}.alternatives"),
        auto_continue=bounded(spec.auto_continue, 0, MAX_CONTINUE, f"{at}.auto_continue"),
        config=_config(spec, at, earlier, generated=generated),
    )


def _kind_fields(spec: pb.StepSpec, at: str) -> None:
    """A field the step's kind does not read is refused, naming the kinds that do: accepted,
    it would be stored and ignored, and the workflow would not do what it says."""
    for name, owners in KIND_FIELDS.items():
        if spec.kind not in owners and _set(spec, name):
            raise InvalidArgument(
                f"is read by {' and '.join(owners)} steps only: {spec.kind} steps ignore it",
                field=f"{at}.{name}",
            )
    if spec.alternatives > 1 and spec.kind not in ALTERNATIVE_KINDS:
        raise InvalidArgument(
            f"only {', '.join(ALTERNATIVE_KINDS)} steps keep alternatives: {spec.kind} steps "
            "make one output",
            field=f"{at}.alternatives",
        )
    if spec.kind == kinds.TOOL:
        for name in MODEL_FIELDS:
            if _set(spec, name):
                raise InvalidArgument(
                    "tool steps call no model: they ignore it", field=f"{at}.{name}"
                )


def _set(spec: pb.StepSpec, name: str) -> bool:
    """Given a value: proto3 scalars have no presence, so their zero value is unset."""
    return bool(getattr(spec, name))


def _config(
    spec: pb.StepSpec, at: str, earlier: Sequence[str], *, generated: bool = False
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if spec.kind == kinds.FAN_OUT:
        if not spec.source:
            raise InvalidArgument("a fan_out needs the step it splits", field=f"{at}.source")
        if spec.source not in earlier:
            raise InvalidArgument(f"{spec.source!r} is not an earlier step", field=f"{at}.source")
        split = spec.split or "headings"
        if split not in SPLITS:
            raise InvalidArgument(f"one of {', '.join(SPLITS)}", field=f"{at}.split")
        concurrency = bounded(spec.concurrency or 4, 1, MAX_CONCURRENCY, f"{at}.concurrency")
        config.update(source=spec.source, split=split, concurrency=concurrency)
    if spec.generates:
        if spec.generates not in GENERATES:
            raise InvalidArgument(f"one of {', '.join(GENERATES)}", field=f"{at}.generates")
        config["generates"] = spec.generates
    if spec.reviews:
        # A generated check reviews generated steps, by their names as stored.
        reviews = [one_line(name) for name in spec.reviews] if generated else list(spec.reviews)
        for j, name in enumerate(reviews):
            if name not in earlier:
                raise InvalidArgument(
                    f"{name!r} is not an earlier step", field=f"{at}.reviews[{j}]"
                )
        config["reviews"] = reviews
    if spec.providers:
        config["providers"] = provider_chain(spec.providers, f"{at}.providers")
        named = config["providers"][0].partition(":")[2]
        if spec.model and named and named != spec.model:
            # The entry's model is the one served: which of the two was meant is not guessed.
            raise InvalidArgument(
                f"the first provider of the step's chain, {config['providers'][0]!r}, names "
                f"its own model: name the model in one place",
                field=f"{at}.model",
            )
    if spec.phase:
        config["phase"] = text(spec.phase, f"{at}.phase", 40)
    if spec.kind == kinds.TOOL:
        if not spec.tool:
            raise InvalidArgument("a tool step names its tool", field=f"{at}.tool")
        if spec.tool not in kinds.TOOLS:  # now, not after every earlier step was paid for
            raise InvalidArgument(
                f"unknown tool {spec.tool[:40]!r} (one of {', '.join(kinds.TOOLS)})",
                field=f"{at}.tool",
            )
        config["tool"] = spec.tool
        if spec.tool == "scan_repository":
            params = json_object(spec.params_json, f"{at}.params")
            for key in kinds.SCAN_MAXIMA:  # the tool's own defaults are within them
                if key in params:
                    kinds.scan_limit(params, key, 1, f"{at}.params")
    return config


def provider_name(name: str, field: str) -> str:
    if name not in kinds.PROVIDERS:
        raise InvalidArgument(
            f"unknown provider {name!r} (one of {', '.join(kinds.PROVIDERS)})", field=field
        )
    return name


def provider_chain(entries: Sequence[str], field: str) -> list[str]:
    """["anthropic:claude-sonnet-4", "local"] — each a known provider, optionally with a model."""
    if len(entries) > kinds.MAX_CHAIN:
        raise InvalidArgument(f"at most {kinds.MAX_CHAIN} providers", field=field)
    chain = []
    for i, entry in enumerate(entries):
        name, _, model = entry.strip().partition(":")
        provider_name(name, f"{field}[{i}]")
        if len(entry) > MAX_NAME:
            raise InvalidArgument(f"must be at most {MAX_NAME} characters", field=f"{field}[{i}]")
        chain.append(f"{name}:{model.strip()}" if model.strip() else name)
    return chain


def _references(spec: pb.StepSpec, at: str, earlier: Sequence[str]) -> None:
    """Every `{{ … }}` in a prompt must resolve: an unknown one is an error now, not at run time."""
    for match in expressions(spec.prompt):
        expression = match.group(1).strip()
        reference = REFERENCE.fullmatch(match.group(0))
        if reference is None:
            raise InvalidArgument(
                f"unknown reference {{{{ {expression} }}}}: use {{{{ steps.<name>.output }}}}, "
                '{{ item }} in a fan_out, or {{ "{{" }} for a literal {{',
                field=f"{at}.prompt",
            )
        if reference["item"] and spec.kind != kinds.FAN_OUT:
            raise InvalidArgument(
                "{{ item }} is only defined inside a fan_out", field=f"{at}.prompt"
            )
        if reference["step"] is not None and reference["step"].strip() not in earlier:
            raise InvalidArgument(
                f"{{{{ {expression} }}}} names no earlier step", field=f"{at}.prompt"
            )


MAX_TOKEN = 2**31 - 1  # the column is int32: no claim ever handed out more


def token(value: int, field: str = "token") -> int:
    """A fencing token within the column's range; one no claim handed out (0, say) is then
    refused as stale by the fence itself."""
    if not 0 <= value <= MAX_TOKEN:
        raise InvalidArgument(f"must be a claim's token (0 to {MAX_TOKEN})", field=field)
    return value


def bounded(value: int, low: int, high: int, field: str) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"must be between {low} and {high}", field=field)
    return value


def json_object(raw: str, field: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"is not valid JSON: {error.msg}", field=field) from None
    except (ValueError, RecursionError) as error:  # NaN, 5000-digit numbers, deep nesting
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise InvalidArgument(f"is not valid JSON: {reason}", field=field) from None
    if not isinstance(value, dict):
        raise InvalidArgument("must be a JSON object", field=field)
    try:  # "\ud800" escapes decode to lone surrogates, which no UTF-8 reader can take back
        if "\\u" in raw:  # only an escape makes one: protobuf strings are valid UTF-8
            json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidArgument("holds a lone UTF-16 surrogate", field=field) from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    """1e400 reads as infinity, which would be written back as `Infinity`: not JSON, refused
    by PostgreSQL and by every browser's JSON.parse."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond a double's range")
    return value


MAX_EVENT_TYPE = 40  # the run_events.type column


def event_type(value: str, field: str) -> str:
    """An engine's event: named, fits its column, and never terminal (FinishRun writes those)."""
    if not value:
        raise InvalidArgument("is required", field=field)
    if len(value) > MAX_EVENT_TYPE:
        raise InvalidArgument(f"must be at most {MAX_EVENT_TYPE} characters", field=field)
    if value in ev.TERMINAL_EVENTS:
        raise InvalidArgument(f"{value!r} is written by FinishRun only", field=field)
    if value == ev.RUN_REQUEUED:
        raise InvalidArgument(f"{value!r} is written by runs only", field=field)
    return value


def event_data(raw: str, field: str) -> dict[str, Any]:
    return json_object(raw, field)


@dataclass(frozen=True)
class StepEdit:
    """What a retry changes in its step first; None leaves a field as it is."""

    max_tokens: int | None = None
    auto_continue: int | None = None
    model: str | None = None
    providers: list[str] | None = None  # [] = the workflow's (or tenant's) chain


def step_edit(request: runs_pb2.RetryStepRequest) -> StepEdit | None:
    if not (
        request.HasField("max_tokens")
        or request.HasField("auto_continue")
        or request.HasField("model")
        or request.HasField("providers")
    ):
        return None
    model = request.model if request.HasField("model") else None
    if model is not None:
        model = text(model, "model", MAX_NAME, required=False)
    return StepEdit(
        max_tokens=(
            bounded(request.max_tokens, 1, MAX_MAX_TOKENS, "max_tokens")
            if request.HasField("max_tokens")
            else None
        ),
        auto_continue=(
            bounded(request.auto_continue, 0, MAX_CONTINUE, "auto_continue")
            if request.HasField("auto_continue")
            else None
        ),
        model=model,
        providers=(
            provider_chain(request.providers.names, "providers.names")
            if request.HasField("providers")
            else None
        ),
    )
