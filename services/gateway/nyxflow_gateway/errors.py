"""The one place errors become HTTP responses: JSON with the field named, never a trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from nyxflow.errors import NyxflowError, ResourceExhausted
from nyxflow.templates import field_path

log = logging.getLogger(__name__)
SOURCES = ("body", "query", "path", "header", "cookie")


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


def response(error: NyxflowError) -> JSONResponse:
    code = error.code.name.lower()
    # Too large for a gRPC message: the request's body as a whole is what is refused.
    field = error.field or ("body" if isinstance(error, ResourceExhausted) else None)
    return JSONResponse(error_body(code, error.message, field), status_code=error.http_status)


def install(app: FastAPI) -> None:
    @app.exception_handler(NyxflowError)
    async def nyxflow_error(_: Request, error: NyxflowError) -> JSONResponse:
        return response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
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
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 413:  # a body without a length, past the limit as it was read
            return response(ResourceExhausted(str(error.detail), field="body"))
        # FastAPI's own 400 is a body it could not parse (not UTF-8, a broken form).
        field = "body" if error.status_code == 400 else None
        return JSONResponse(
            error_body("http_error", str(error.detail), field), status_code=error.status_code
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse(error_body("internal", "internal error"), status_code=500)
