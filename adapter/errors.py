"""The one place that builds Ollama-style errors: `{"error": "..."}` with a status."""

from __future__ import annotations

import orjson
from starlette.responses import Response


class OllamaError(Exception):
    """An error the client must see as `status` + `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BadRequest(OllamaError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class ModelNotFound(OllamaError):
    def __init__(self, model: str) -> None:
        # The scheduler's wording; the `ollama` CLI pulls on a 404.
        super().__init__(404, f'model "{model}" not found, try pulling it first')


class UpstreamUnavailable(OllamaError):
    """The backend could not be reached (refused, DNS, connect timeout)."""

    def __init__(self, backend: str, detail: str, status: int = 502) -> None:
        super().__init__(status, f"{backend} is unavailable: {detail}")
        self.backend = backend


class UpstreamTimeout(OllamaError):
    def __init__(self, backend: str, what: str) -> None:
        super().__init__(504, f"{backend} timed out ({what})")
        self.backend = backend


class UpstreamHTTPError(OllamaError):
    """The backend answered with an error status: pass its status and message on."""

    def __init__(self, backend: str, status: int, message: str) -> None:
        super().__init__(status, message)
        self.backend = backend


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error_body(message), status_code=status, media_type="application/json; charset=utf-8", headers=headers
    )
