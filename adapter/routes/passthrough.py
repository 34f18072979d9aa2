"""Calls a real Ollama answers: embeddings and model management, forwarded to Ollama Vision.

For models vLLM serves, management calls are answered here: `pull` succeeds (the model is already
there; Home Assistant pulls any model it does not find by exact name), the others refuse clearly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from adapter.errors import BadRequest, ModelNotFound, OllamaError
from adapter.gateway import Gateway
from adapter.routes.chat_generate import json_response
from adapter.routing import Route
from adapter.schemas import read_json_object
from adapter.streaming import StreamResponse, ndjson_line
from vision.proxy import forward

MANAGED_BY_VLLM = "model {name!r} is served by the vLLM deployment and managed there, not through the Ollama API"


def _vision(gw: Gateway) -> Any:
    if gw.vision is None:
        raise OllamaError(503, "Ollama Vision is not configured")
    return gw.vision


async def _route_or_none(gw: Gateway, name: str) -> Route | None:
    try:
        return await gw.registry.resolve(name)
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


async def _forward_body(gw: Gateway, path: str, body: dict[str, Any], route: Route | None) -> Response:
    if route is not None and route.backend == "ollama" and body.get("model") not in (None, route.upstream_model):
        body = {**body, "model": route.upstream_model}
    return await forward(_vision(gw), "POST", path, json_body=body)


async def embed(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    body = await read_json_object(request, gw.settings.adapter_max_body_bytes)
    route = await _route_or_none(gw, _name(body, "model", "name"))
    return await _forward_body(gw, "/api/embed", body, route)


async def embeddings(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    body = await read_json_object(request, gw.settings.adapter_max_body_bytes)
    route = await _route_or_none(gw, _name(body, "model", "name"))
    return await _forward_body(gw, "/api/embeddings", body, route)


async def _pull_progress(name: str) -> AsyncIterator[bytes]:
    yield ndjson_line({"status": "pulling manifest"})
    yield ndjson_line({"status": "verifying sha256 digest"})
    yield ndjson_line({"status": "writing manifest"})
    yield ndjson_line({"status": "success"})


async def pull(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    body = await read_json_object(request, gw.settings.adapter_max_body_bytes)
    name = _name(body, "model", "name")
    route = await _route_or_none(gw, name)
    if route is not None and route.backend == "vllm":
        if body.get("stream") is False:
            return json_response({"status": "success"})
        return StreamResponse(_pull_progress(name))
    return await _forward_body(gw, "/api/pull", body, route)


async def push(request: Request) -> Response:
    return await _managed(request, "/api/push", ("model", "name"))


async def create(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    body = await read_json_object(request, gw.settings.adapter_max_body_bytes)
    name = _name(body, "model", "name")
    for candidate in (name, body.get("from")):
        if isinstance(candidate, str) and candidate:
            route = await _route_or_none(gw, candidate)
            if route is not None and route.backend == "vllm":
                raise BadRequest(MANAGED_BY_VLLM.format(name=candidate))
    return await forward(_vision(gw), "POST", "/api/create", json_body=body)


async def copy(request: Request) -> Response:
    return await _managed(request, "/api/copy", ("source",))


async def delete(request: Request) -> Response:
    return await _managed(request, "/api/delete", ("model", "name"), method="DELETE")


async def _managed(request: Request, path: str, keys: tuple[str, ...], method: str = "POST") -> Response:
    gw: Gateway = request.app.state.gateway
    body = await read_json_object(request, gw.settings.adapter_max_body_bytes)
    name = _name(body, *keys)
    route = await _route_or_none(gw, name)
    if route is not None and route.backend == "vllm":
        raise BadRequest(MANAGED_BY_VLLM.format(name=name))
    return await forward(_vision(gw), method, path, json_body=body)


async def blobs(request: Request) -> Response:
    """HEAD/POST /api/blobs/sha256:<hex>: streamed both ways (blobs are model files, gigabytes)."""
    gw: Gateway = request.app.state.gateway
    digest = request.path_params["digest"]
    vision = _vision(gw)
    path = f"/api/blobs/{digest}"
    if request.method == "HEAD":
        return await forward(vision, "HEAD", path, content_type=None)
    response = await vision.send(
        "POST",
        path,
        content=request.stream(),
        headers={"Content-Type": request.headers.get("content-type", "application/octet-stream")},
        raise_for_status=False,
    )
    body = await response.aread()
    await response.aclose()
    return Response(body, status_code=response.status_code, media_type=response.headers.get("content-type"))
