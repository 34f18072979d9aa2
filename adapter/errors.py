"""The one place that builds errors: the exceptions the gateway raises, and their bodies in each API
family's dialect (Ollama's `{"error": "..."}`, OpenAI's and Anthropic's nested objects)."""

from __future__ import annotations

from typing import Literal

import orjson
from starlette.responses import Response

Dialect = Literal["ollama", "openai", "anthropic"]

# How much of an upstream error is passed on: enough for any real message, never a 4 MB echo.
MAX_UPSTREAM_MESSAGE = 2000


class OllamaError(Exception):
    """An error the client must see as `status` + an error body (Ollama's `{"error": message}`)."""

    def __init__(self, status: int, message: str, *, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class BadRequest(OllamaError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class ModelNotFound(OllamaError):
    def __init__(self, model: str) -> None:
        # The scheduler's wording; the `ollama` CLI pulls on a 404.
        super().__init__(404, f'model "{model}" not found, try pulling it first')
        self.model = model


class ClientGone(OllamaError):
    """The client disconnected before its answer was ready (Ollama's 499)."""

    def __init__(self) -> None:
        super().__init__(499, "request canceled")


class UpstreamUnavailable(OllamaError):
    """The backend could not be reached (refused, DNS, connect timeout): no byte of the request
    reached it, so sending it elsewhere (another replica, a fallback) is safe."""

    def __init__(self, backend: str, detail: str, status: int = 502) -> None:
        super().__init__(status, f"{backend} is unavailable: {detail}")
        self.backend = backend


class UpstreamTimeout(OllamaError):
    def __init__(self, backend: str, what: str) -> None:
        super().__init__(504, f"{backend} timed out ({what})")
        self.backend = backend


class UpstreamFailed(OllamaError):
    """The request reached the backend, which failed without an answer (closed, reset, garbage)."""

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(502, f"{backend} failed: {detail}")
        self.backend = backend


def client_status_for(upstream_status: int) -> int:
    """The status a client gets for an upstream error status.

    4xx are the caller's mistakes and pass on as they are. An upstream 5xx is a failure of a server
    behind the gateway: 502 (Bad Gateway), except 503 (busy or loading: retryable, Retry-After kept)
    and 504 (its own timeout), which already say what happened.
    """
    if upstream_status < 500 or upstream_status in (503, 504):
        return upstream_status
    return 502


class UpstreamHTTPError(OllamaError):
    """The backend answered with an error status: its message, under the status a client expects."""

    def __init__(self, backend: str, upstream_status: int, message: str, retry_after: str | None = None) -> None:
        message = message[:MAX_UPSTREAM_MESSAGE]
        if upstream_status >= 500 or upstream_status in (401, 403):
            message = f"{backend} error ({upstream_status}): {message}"
        super().__init__(client_status_for(upstream_status), message, retry_after=retry_after)
        self.backend = backend
        self.upstream_status = upstream_status


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_body_for(dialect: Dialect, status: int, message: str) -> bytes:
    if dialect == "openai":
        kind = _OPENAI_TYPES.get(status, "api_error")
        return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return error_body(message)


def error_response(
    status: int, message: str, *, dialect: Dialect = "ollama", retry_after: str | None = None
) -> Response:
    media_type = "application/json; charset=utf-8" if dialect == "ollama" else "application/json"
    headers = {"Retry-After": retry_after} if retry_after else None
    body = error_body_for(dialect, status, message)
    return Response(body, status_code=status, media_type=media_type, headers=headers)


def response_for(exc: OllamaError, dialect: Dialect = "ollama") -> Response:
    return error_response(exc.status, exc.message, dialect=dialect, retry_after=exc.retry_after)
