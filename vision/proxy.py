"""The Ollama Vision pass-through: what is sent to the real Ollama and how its answer comes back.

Requests go out as the client wrote them (the model name too, unless the gateway's catalog or an
alias maps it); answers come back byte for byte. The one exception is a fallback, where another
model answers for the one the client asked for: each answer line then names the requested model.

This package imports nothing from `adapter/`: the gateway sends and reads (its transport, its limits,
its errors); this module says what Ollama Vision is sent, and how a fallback's answer is renamed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson


def request_body(body: dict[str, Any], model: str | None) -> bytes:
    """The body Ollama Vision gets: the client's own, with `model` replaced only when the gateway
    maps the name to another (an alias, a catalog entry, a fallback)."""
    if model is not None and body.get("model", body.get("name")) != model:
        body = {**body, "model": model}
        body.pop("name", None)
    return orjson.dumps(body)


async def model_rewritten(chunks: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
    """NDJSON (or one JSON object) with each object's `model` replaced: a fallback's answer names
    the model the client asked for, so the client sees nothing different."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if lines:
            yield b"".join(with_model(line, model) + b"\n" for line in lines if line.strip())
    if buffer.strip():
        yield with_model(buffer, model)


def with_model(line: bytes, model: str) -> bytes:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if isinstance(obj, dict) and "model" in obj:
        obj["model"] = model
    return orjson.dumps(obj)


def models_of(listing: Any) -> list[dict[str, Any]]:
    """The `models` of Ollama's /api/tags or /api/ps answer, whatever else a broken one holds."""
    models = listing.get("models") if isinstance(listing, dict) else None
    if not isinstance(models, list):
        return []
    return [m for m in models if isinstance(m, dict) and isinstance(m.get("model") or m.get("name"), str)]
