"""The one place errors become HTTP responses: JSON with the field named, never a trace."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from nyxflow.errors import NyxflowError, ResourceExhausted
from nyxflow.templates import field_path
from nyxflow_gateway.headers import HEADERS

log = logging.getLogger(__name__)
SOURCES = ("body", "query", "path", "header", "cookie")
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
# The routes whose gRPC request is not shaped as their HTTP request: each gRPC field path (its
# leading part; `[]` stands for any index) and the HTTP one it is sent as (sent_as).
_SENT_AS: dict[Callable[..., Any], tuple[tuple[re.Pattern[str], str], ...]] = {}


class Error(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorBody(BaseModel):
    """Every error the gateway answers, whatever its status: the OpenAPI document's one model."""

    error: Error


def error_body(code: str, message: str, field: str | None = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "field": field}}


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# The /v1 operations' errors, for the OpenAPI document. "default" (any other status, a 500
# among them) also keeps FastAPI from adding its 422: a request it cannot validate is a 400.
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("The request is invalid; `field` names what is wrong."),
    401: _documented("The API key is missing, malformed, unknown, revoked or expired."),
    404: _documented("Not found (or another tenant's)."),
    409: _documented("It already exists, or the operation is not allowed in the current state."),
    413: _documented("The request is too large; `field` names what is."),
    503: _documented("A service is unavailable; try again."),
    "default": _documented("Any other error, in the same body."),
}


def sent_as(fields: Mapping[str, str]) -> Callable[[Endpoint], Endpoint]:
    """Declares, below a route's decorator, how its gRPC request wraps what the client sent:
    the services name the message's fields, and the error handler answers with the client's.
    {"persona": ""}: the body and path sent as the message's `persona` ("persona.name" is the
    path's "name"); {"providers.names": "providers"}: a list sent inside a message;
    {"steps[].params_json": "steps[].params"}: a field renamed."""
    if any(grpc.count("[]") != http.count("[]") for grpc, http in fields.items()):
        raise ValueError(f"each `[]` names an index on both sides: {fields}")
    renames = tuple((_pattern(grpc), http) for grpc, http in fields.items())

    def declare(endpoint: Endpoint) -> Endpoint:
        _SENT_AS[endpoint] = renames
        return endpoint

    return declare


def _pattern(path: str) -> re.Pattern[str]:
    """The gRPC path and any path inside it: "steps[]" matches "steps[2]" and "steps[2].x",
    never "steps_x"."""
    return re.compile(re.escape(path).replace(r"\[\]", r"(\[\d+\])") + r"(?=$|[.\[])")


def http_field(field: str | None, endpoint: Any) -> str | None:
    """The field as the client sent it to `endpoint`, for one the services named."""
    if not field or not callable(endpoint):
        return field
    for pattern, http in _SENT_AS.get(endpoint, ()):
        if match := pattern.match(field):
            first, *parts = http.split("[]")  # each `[]` takes the index the services named
            sent = first + "".join(i + p for i, p in zip(match.groups(), parts, strict=True))
            rest = field[match.end() :]
            # A message that wraps the whole body: its fields are the body's own.
            return sent + rest if sent else rest.removeprefix(".") or "body"
    return field


RETRY_AFTER_S = "1"  # on a 503: another replica, or this one restarted, answers by then

# The methods whose request has a body, which a refusal as too large can name.
BODIED = frozenset({"POST", "PUT", "PATCH"})


def response(error: NyxflowError, field: str | None = None, bodied: bool = True) -> JSONResponse:
    """`bodied`: the request had a body (BODIED); a read's answer too large names none."""
    code = error.code.name.lower()
    # Too large for a gRPC message: the request's body as a whole is what is refused.
    too_large = bodied and isinstance(error, ResourceExhausted)
    field = field or error.field or ("body" if too_large else None)
    answer = JSONResponse(error_body(code, error.message, field), status_code=error.http_status)
    if error.http_status == 503:  # a service away or draining: a client's cue for when to ask again
        answer.headers["Retry-After"] = RETRY_AFTER_S
    return answer


def allowed_methods(request: Request) -> set[str]:
    """Every method some route takes at the request's path: Starlette's 405 names only the
    first route that matched the path (`DELETE /v1/workflows` named GET, not POST). A mount
    (the static files) names its own."""
    # A mount that matched left its own root path in the scope: the routes match the whole path.
    scope = {
        **request.scope,
        "root_path": request.scope.get("app_root_path", request.scope.get("root_path", "")),
    }
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        if route.methods and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods
    return methods


def install(app: FastAPI) -> None:
    @app.exception_handler(NyxflowError)
    async def nyxflow_error(request: Request, error: NyxflowError) -> JSONResponse:
        field = http_field(error.field, request.scope.get("endpoint"))
        return response(error, field, request.method in BODIED)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        found = error.errors()
        # A misspelt field is also a missing one: the name the client sent is the one to fix.
        first = next((e for e in found if e.get("type") == "extra_forbidden"), found[0])
        loc = tuple(first.get("loc", ()))
        location = tuple(p for p in loc if p not in SOURCES)
        # A missing or malformed body, or a body of the wrong type, is the body's fault.
        whole = first.get("type") == "json_invalid" or not location
        field = str(loc[0]) if whole and loc else field_path(location) or "request"
        return JSONResponse(
            error_body("invalid_argument", str(first.get("msg", "invalid")), field),
            status_code=400,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 413:  # a body without a length, past the limit as it was read
            return response(ResourceExhausted(str(error.detail), field="body"))
        # FastAPI's own 400 is a body it could not parse (not UTF-8, a broken form).
        field = "body" if error.status_code == 400 else None
        headers = dict(error.headers or {})
        if error.status_code == 405 and (methods := allowed_methods(request)):
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse(
            error_body("http_error", str(error.detail), field),
            status_code=error.status_code,
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        # Starlette answers this from outside every middleware: SecurityHeaders never sees it.
        return JSONResponse(
            error_body("internal", "internal error"),
            status_code=500,
            headers={name.decode(): value.decode() for name, value in HEADERS},
        )
