"""Calls a real Ollama answers: embeddings and model management, forwarded to Ollama Vision.

For models vLLM serves, management calls are answered here: `pull` succeeds (the model is already
there; Home Assistant pulls any model it does not find by exact name), the others refuse clearly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from adapter.context import facts_of
from adapter.errors import BadRequest, ModelNotFound, OllamaError
from adapter.gateway import Gateway
from adapter.relay import Relay, relay, traced_call
from adapter.routes.chat_generate import json_response
from adapter.routing import Route
from adapter.schemas import read_json_object
from adapter.streaming import StreamResponse, ndjson_line
from vision.proxy import request_body

MANAGED_BY_VLLM = "model {name!r} is served by the vLLM deployment and managed there, not through the Ollama API"


async def _route_or_none(gw: Gateway, name: str) -> Route | None:
    try:
        return await gw.router.resolve(name)
    except ModelNotFound:
        return None
    except OllamaError:
        return None  # vLLM unreachable: let Ollama Vision decide


def _name(body: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise BadRequest(f"{keys[0]} is required")


async def _forward(
    gw: Gateway, request: Request, method: str, path: str, body: dict[str, Any], route: Route | None
) -> Response:
    """To Ollama Vision, the model named as the client wrote it unless an alias or the catalog maps it."""
    facts = facts_of(request)
    facts.backend = "ollama"
    mapped = route.upstream_model if route is not None and not route.on_vllm else None
    facts.model_label = mapped or facts.model or "none"
    how = Relay([gw.vision], gw.vision_timeouts, gw.metrics, "ollama")
    return await relay(request, how, method, path, request_body(body, mapped), stream=body.get("stream") is not False)


async def _read(request: Request, *keys: str) -> tuple[Gateway, dict[str, Any], str]:
    gw: Gateway = request.app.state.gateway
    body = await read_json_object(request, gw.settings.adapter_max_body_bytes)
    name = _name(body, *keys)
    facts_of(request).model = name
    return gw, body, name


async def embed(request: Request) -> Response:
    gw, body, name = await _read(request, "model", "name")
    return await _forward(gw, request, "POST", "/api/embed", body, await _route_or_none(gw, name))


async def embeddings(request: Request) -> Response:
    gw, body, name = await _read(request, "model", "name")
    return await _forward(gw, request, "POST", "/api/embeddings", body, await _route_or_none(gw, name))


async def _pull_progress() -> AsyncIterator[bytes]:
    yield ndjson_line({"status": "pulling manifest"})
    yield ndjson_line({"status": "verifying sha256 digest"})
    yield ndjson_line({"status": "writing manifest"})
    yield ndjson_line({"status": "success"})


async def pull(request: Request) -> Response:
    gw, body, name = await _read(request, "model", "name")
    route = await _route_or_none(gw, name)
    if route is not None and route.on_vllm:
        facts_of(request).backend = route.backend
        if body.get("stream") is False:
            return json_response({"status": "success"})
        return StreamResponse(_pull_progress())
    return await _forward(gw, request, "POST", "/api/pull", body, route)


async def push(request: Request) -> Response:
    return await _managed(request, "POST", "/api/push", ("model", "name"))


async def create(request: Request) -> Response:
    gw, body, name = await _read(request, "model", "name")
    for candidate in (name, body.get("from")):
        if isinstance(candidate, str) and candidate:
            route = await _route_or_none(gw, candidate)
            if route is not None and route.on_vllm:
                raise BadRequest(MANAGED_BY_VLLM.format(name=candidate))
    return await _forward(gw, request, "POST", "/api/create", body, None)


async def copy(request: Request) -> Response:
    return await _managed(request, "POST", "/api/copy", ("source",))


async def delete(request: Request) -> Response:
    return await _managed(request, "DELETE", "/api/delete", ("model", "name"))


async def _managed(request: Request, method: str, path: str, keys: tuple[str, ...]) -> Response:
    gw, body, name = await _read(request, *keys)
    route = await _route_or_none(gw, name)
    if route is not None and route.on_vllm:
        raise BadRequest(MANAGED_BY_VLLM.format(name=name))
    return await _forward(gw, request, method, path, body, None)


async def blobs(request: Request) -> Response:
    """HEAD/POST /api/blobs/sha256:<hex>: the upload is streamed (blobs are model files, gigabytes)."""
    gw: Gateway = request.app.state.gateway
    facts = facts_of(request)
    facts.backend = "ollama"
    path = f"/api/blobs/{request.path_params['digest']}"
    vision = gw.vision.upstream
    with traced_call(facts, vision, "ollama", request.method, path) as call:
        if request.method == "HEAD":
            response = await vision.send("HEAD", path, headers=call.headers, raise_for_status=False)
        else:
            content_type = request.headers.get("content-type", "application/octet-stream")
            response = await vision.send(
                "POST",
                path,
                content=request.stream(),
                headers={**call.headers, "Content-Type": content_type},
                raise_for_status=False,
            )
        call.status = response.status_code
        try:
            body = await vision.read_body(response)
        finally:
            response.close()
    return Response(body, status_code=response.status_code, media_type=response.headers.get("content-type"))
