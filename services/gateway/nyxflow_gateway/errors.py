"""The one place errors become HTTP responses: JSON with the field named, never a trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from nyxflow.errors import NyxflowError
from nyxflow.templates import field_path

log = logging.getLogger(__name__)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "field": field}}


def install(app: FastAPI) -> None:
    @app.exception_handler(NyxflowError)
    async def nyxflow_error(_: Request, error: NyxflowError) -> JSONResponse:
        code = error.code.name.lower()
        return JSONResponse(
            error_body(code, error.message, error.field), status_code=error.http_status
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        location = tuple(p for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        field = field_path(location) or None
        return JSONResponse(
            error_body("invalid_argument", str(first.get("msg", "invalid")), field),
            status_code=400,
        )

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body("http_error", str(error.detail)), status_code=error.status_code
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse(error_body("internal", "internal error"), status_code=500)
