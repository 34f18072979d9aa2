"""Streaming pass-through to Ollama Vision: status, content type and body bytes as they arrive.

No parsing, no re-encoding of the answer. A client that leaves closes the upstream request.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response

from adapter.errors import UpstreamUnavailable
from adapter.streaming import StreamResponse
from adapter.upstream import Upstream

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
    read_timeout: float | None | bool = False,
) -> StreamResponse | Response:
    """Send one request to Ollama Vision and stream its answer back untouched.

    Errors from Ollama Vision (4xx/5xx) are passed on as they are: they are already Ollama-shaped.
    Only a failure to reach it becomes our own 502.
    """
    if json_body is not None:
        body = orjson.dumps(json_body)
    headers = {"Content-Type": content_type} if content_type and body is not None else None
    try:
        response = await vision.send(
            method, path, body=body, headers=headers, read_timeout=read_timeout, raise_for_status=False
        )
    except UpstreamUnavailable as exc:
        raise UpstreamUnavailable(vision.name, exc.message.split(": ", 1)[-1]) from None
    kept = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
        if name.lower() in _KEEP_HEADERS and name.lower() != "content-type"
    ]
    media_type = response.headers.get("content-type", "application/json; charset=utf-8").encode("latin-1")
    return StreamResponse(
        _raw_bytes(response),
        media_type=media_type,
        status=response.status_code,
        headers=kept,
        on_close=response.aclose,
        backend=vision.name,
        # Bytes pass through untouched; if Ollama Vision dies mid-answer we cannot add an NDJSON line
        # to a body that may not be NDJSON, so the connection simply ends.
        error_lines=response.headers.get("content-type", "").startswith("application/x-ndjson"),
    )


async def _raw_bytes(response: httpx.Response):  # type: ignore[no-untyped-def]
    async for chunk in response.aiter_raw():
        if chunk:
            yield chunk


async def forward_request(vision: Upstream, request: Request, path: str, body: bytes | None) -> StreamResponse | Response:
    """Forward the client's own request (method, body, content type) to the same path."""
    return await forward(
        vision,
        request.method,
        path,
        body=body if body else None,
        content_type=request.headers.get("content-type") or "application/json",
    )
