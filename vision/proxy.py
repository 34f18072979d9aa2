"""Streaming pass-through to Ollama Vision: status, content type and body bytes as they arrive.

No parsing, no re-encoding of the answer. A client that leaves closes the upstream request.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from adapter.streaming import StreamResponse
from adapter.upstream import BACKEND_DEFAULT, Upstream, UpstreamResponse

# Response headers worth keeping; hop-by-hop and length headers are the server's business.
_KEEP_HEADERS = ("content-type", "retry-after", "location")


async def forward(
    vision: Upstream,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    json_body: dict[str, Any] | None = None,
    content_type: str | None = "application/json",
    read_timeout: float | None = BACKEND_DEFAULT,
    request_id: str | None = None,
    rewrite_model: str | None = None,
) -> StreamResponse | Response:
    """Send one request to an upstream (Ollama Vision, or vLLM for /v1 pass-through) and stream its
    answer back untouched, holding one of the upstream's limiter slots until the answer ends.

    Errors from the upstream (4xx/5xx) are passed on as they are: they are already in the caller's
    dialect. Only a failure to reach it becomes our own 502. `rewrite_model` (fallbacks only) puts the
    requested model name back into each answer line, so the client sees nothing different.
    """
    if json_body is not None:
        body = orjson.dumps(json_body)
    headers = {"Content-Type": content_type} if content_type and body is not None else {}
    if request_id:
        headers["X-Request-ID"] = request_id
    await vision.limiter.acquire()
    try:
        response = await vision.send(
            method, path, body=body, headers=headers, read_timeout=read_timeout, raise_for_status=False
        )
    except BaseException:
        vision.limiter.release()
        raise

    async def close() -> None:
        await response.aclose()
        vision.limiter.release()

    kept = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
        if name.lower() in _KEEP_HEADERS and name.lower() != "content-type"
    ]
    media_type = response.headers.get("content-type", "application/json; charset=utf-8").encode("latin-1")
    chunks = _raw_bytes(response) if rewrite_model is None else _model_rewritten(response, rewrite_model)
    return StreamResponse(
        chunks,
        media_type=media_type,
        status=response.status_code,
        headers=kept,
        on_close=close,
        backend=vision.name,
        # Bytes pass through untouched; if Ollama Vision dies mid-answer we cannot add an NDJSON line
        # to a body that may not be NDJSON, so the connection simply ends.
        error_lines=response.headers.get("content-type", "").startswith("application/x-ndjson"),
    )


async def _raw_bytes(response: UpstreamResponse):  # type: ignore[no-untyped-def]
    async for chunk in response.aiter_raw():
        if chunk:
            yield chunk


async def _model_rewritten(response: UpstreamResponse, model: str):  # type: ignore[no-untyped-def]
    """NDJSON (or one JSON object) with each object's `model` replaced."""
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if lines:
            yield b"".join(_with_model(line, model) + b"\n" for line in lines if line.strip())
    if buffer.strip():
        yield _with_model(buffer, model)


def _with_model(line: bytes, model: str) -> bytes:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if isinstance(obj, dict) and "model" in obj:
        obj["model"] = model
    return orjson.dumps(obj)
