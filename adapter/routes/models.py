"""Ollama's read API: /, /api/version, /api/tags, /api/show, /api/ps.

One model list across both backends: vLLM models described from what vLLM reports, Ollama Vision
models as Ollama Vision describes them. A backend that is down is logged and left out, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from adapter.catalog import FIM_TEMPLATES, normalize_name
from adapter.errors import BadRequest, ModelNotFound, OllamaError
from adapter.gateway import Gateway
from adapter.routes.chat_generate import json_response
from adapter.routing import local_rfc3339
from adapter.schemas import read_json_object
from adapter.translate.models import ps_entry, show_response, tags_entry
from vision.proxy import forward

log = logging.getLogger("adapter.routes.models")

# /api/ps "expires_at" for a model that never unloads: Ollama's keep-alive "forever" lands ~292 years out.
_FOREVER_SECONDS = 292 * 365 * 24 * 3600


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running", media_type="text/plain; charset=utf-8")


async def version(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return json_response({"version": gw.settings.adapter_ollama_version})


async def _ollama_models(gw: Gateway, path: str) -> list[dict[str, Any]]:
    if gw.vision is None:
        return []
    try:
        data = await gw.vision.get_json(path)
        models = data.get("models") if isinstance(data, dict) else None
        return [m for m in models or [] if isinstance(m, dict)]
    except OllamaError as exc:
        log.warning("Ollama Vision %s unavailable: %s", path, exc.message)
        return []


async def tags(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    registry = gw.registry
    vllm_listing, ollama_listing = await asyncio.gather(registry.listing("vllm"), registry.listing("ollama"))
    if not vllm_listing.ok:
        log.warning("listing models without vLLM: %s", vllm_listing.error)
    models: list[dict[str, Any]] = []
    seen: set[str] = set()
    for listed in registry.vllm_names(vllm_listing.models):
        seen.add(listed.key)
        modified = local_rfc3339(registry.first_seen("vllm", listed.upstream_id))
        models.append(tags_entry(listed.name, listed.upstream_id, modified, listed.family))
    ollama_by_key = {normalize_name(m.get("model") or m.get("name") or ""): m for m in ollama_listing.models}
    for entry in registry.catalog.models:
        if entry.backend == "ollama":
            source = ollama_by_key.get(normalize_name(entry.upstream_id))
            if source is None:
                continue  # not pulled (or Ollama Vision down): listing it would invite a failing chat
            for name in (entry.name, *entry.aliases):
                listed = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
                if normalize_name(name) not in seen:
                    seen.add(normalize_name(name))
                    models.append({**source, "name": listed, "model": listed})
    if registry.catalog.discover:
        for key, source in ollama_by_key.items():
            if key in seen:
                continue  # a clash: the resolver logs it; vLLM (or the catalog) owns the name
            seen.add(key)
            models.append(source)
    return json_response({"models": models})


async def show(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    body = await read_json_object(request, gw.settings.adapter_max_body_bytes)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("model is required")
    try:
        route = await gw.registry.resolve(name)
    except ModelNotFound:
        raise OllamaError(404, f"model '{name}' not found") from None
    if route.backend == "ollama":
        if gw.vision is None:
            raise OllamaError(404, f"model '{name}' not found")
        return await forward(gw.vision, "POST", "/api/show", json_body={**body, "model": route.upstream_model})
    context_length = await gw.registry.context_length_of(route)
    capabilities = list(route.capabilities)
    fim = route.entry.fim if route.entry is not None else None
    template = None
    if fim:
        begin, hole, end = FIM_TEMPLATES[fim]
        # Continue enables fill-in-the-middle when the template mentions .Suffix.
        template = (
            f"{{{{- if .Suffix }}}}{begin}{{{{ .Prompt }}}}{hole}{{{{ .Suffix }}}}{end}"
            "{{- else }}{{ .Prompt }}{{- end }}"
        )
        if "insert" not in capabilities:
            capabilities.append("insert")
    modified = local_rfc3339(gw.registry.first_seen("vllm", route.upstream_model))
    family = route.entry.family if route.entry is not None else None
    return json_response(
        show_response(
            route.upstream_model,
            modified,
            context_length=context_length,
            capabilities=capabilities,
            family=family,
            template=template,
        )
    )


async def ps(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    vllm_listing, ollama_running = await asyncio.gather(gw.registry.listing("vllm"), _ollama_models(gw, "/api/ps"))
    expires = local_rfc3339(time.time() + _FOREVER_SECONDS)
    names = gw.registry.vllm_names(vllm_listing.models)
    models = [ps_entry(n.name, n.upstream_id, expires, n.context_length, n.family) for n in names]
    seen = {n.key for n in names}
    models.extend(m for m in ollama_running if normalize_name(m.get("model") or m.get("name") or "") not in seen)
    return json_response({"models": models})
