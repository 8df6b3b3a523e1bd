"""OpenAI's error format, and the handlers that put every 4xx/5xx into it.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

The official clients read `message` into the exception they raise, so each message names the bad
value and what is accepted.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

log = logging.getLogger("slm.serve")

_TYPES = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An error the client caused (or a full server); becomes a JSON error response."""

    def __init__(self, *, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(status=self.status, message=self.message, param=self.param, code=self.code,
                              headers=self.headers)


def error_body(*, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(*, status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status=status, message=message, param=param, code=code),
                        status_code=status, headers=headers)


def validation_error(errors: list[dict]) -> ApiError:
    """A 400 naming the bad field (as a dotted path), its value, and what pydantic expected.

    A field typed as a union fails once per branch; the deepest failure is the one that got furthest
    (a list of stop strings with an empty one), and failures of equal depth at one field are the
    branches' alternatives ("a valid string or a valid list")."""
    def path(error: dict) -> str:
        return ".".join(str(x) for x in error.get("loc", ()) if x != "body" and not _is_branch_name(str(x)))

    best = max(errors, key=lambda e: len(e.get("loc", ())))
    where, depth = path(best), len(best.get("loc", ()))
    if best.get("type") == "missing":
        return ApiError(status=400, param=where or None, message=f"{where} is required")
    messages = list(dict.fromkeys(e.get("msg", "invalid value") for e in errors
                                  if path(e) == where and len(e.get("loc", ())) == depth))
    got = repr(best.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    what = " or ".join(messages)
    return ApiError(status=400, param=where or None, message=f"{where}={got}: {what}" if where else what)


def _is_branch_name(part: str) -> bool:
    """pydantic names a union's branch in the error location (`str`, `list[TextPart]`, ...)."""
    return part in ("str", "int", "float", "bool", "dict", "none") or "[" in part or part.startswith(
        ("constrained-", "function-"))


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"{request.method} {request.url.path} is not an endpoint of this server; see /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(status=exc.status_code, message=message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(status=500, message=f"internal server error ({type(exc).__name__}); see the server log")
