"""OpenAI-compatible endpoints on the gateway, as Ollama offers them (/v1/...).

Text models go straight to vLLM, SSE streamed through unchanged (no translation: the fastest path);
embeddings and vision models go to Ollama Vision's own /v1 endpoints. Errors are OpenAI-shaped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from adapter.catalog import normalize_name
from adapter.errors import BadRequest, ModelNotFound, OllamaError
from adapter.gateway import Gateway
from adapter.routing import Route
from adapter.schemas import read_json_object
from vision.proxy import forward

OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}


def openai_error(status: int, message: str) -> Response:
    body = {
        "error": {"message": message, "type": OPENAI_ERROR_TYPES.get(status, "api_error"), "param": None, "code": None}
    }
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _has_images(body: dict[str, Any]) -> bool:
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return True
    return False


async def _resolve(gw: Gateway, body: dict[str, Any]) -> tuple[str, Route]:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("model is required")
    try:
        return model, await gw.registry.resolve(model)
    except ModelNotFound:
        raise OllamaError(404, f"model '{model}' not found") from None


async def _forward_openai(gw: Gateway, path: str, body: dict[str, Any], route: Route) -> Response:
    upstream = gw.vllm
    if route.backend == "ollama" or (
        route.backend == "vllm"
        and path != "/v1/embeddings"
        and _has_images(body)
        and "vision" not in route.capabilities
    ):
        if gw.vision is None:
            raise OllamaError(503, "Ollama Vision is not configured")
        upstream = gw.vision
    elif path == "/v1/embeddings" and "embedding" not in route.capabilities:
        if gw.vision is None:
            raise OllamaError(503, "Ollama Vision is not configured")
        upstream = gw.vision
    if body.get("model") != route.upstream_model:
        body = {**body, "model": route.upstream_model}
    if upstream is gw.vllm and body.get("tools") == []:
        body = {k: v for k, v in body.items() if k != "tools"}  # vLLM 0.32 rejects an empty list
    return await forward(upstream, "POST", path, json_body=body)


async def _proxy(request: Request, path: str) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        body = await read_json_object(request, gw.settings.adapter_max_body_bytes)
        model, route = await _resolve(gw, body)
        request.state.model = model
        request.state.backend = route.backend
        return await _forward_openai(gw, path, body, route)
    except OllamaError as exc:
        return openai_error(exc.status, exc.message)


async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "/v1/chat/completions")


async def completions(request: Request) -> Response:
    return await _proxy(request, "/v1/completions")


async def embeddings(request: Request) -> Response:
    return await _proxy(request, "/v1/embeddings")


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    registry = gw.registry
    vllm_listing, ollama_listing = await asyncio.gather(registry.listing("vllm"), registry.listing("ollama"))
    data: list[dict[str, Any]] = []
    seen: set[str] = set()
    for listed in registry.vllm_names(vllm_listing.models):
        seen.add(listed.key)
        created = int(registry.first_seen("vllm", listed.upstream_id))
        data.append({"id": listed.name, "object": "model", "created": created, "owned_by": "vllm"})
    for m in ollama_listing.models:
        name = m.get("model") or m.get("name") or ""
        if normalize_name(name) in seen:
            continue
        seen.add(normalize_name(name))
        data.append({"id": name, "object": "model", "created": int(time.time()), "owned_by": "library"})
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")
