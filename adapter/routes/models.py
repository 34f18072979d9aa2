"""Ollama's read API: /, /api/version, /api/tags, /api/show, /api/ps.

One model list across both backends: vLLM models described from what vLLM reports, Ollama Vision
models as Ollama Vision describes them. A backend that is down is logged and left out, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from adapter.catalog import FIM_TEMPLATES
from adapter.context import RequestFacts, facts_of
from adapter.errors import BadRequest, ModelNotFound, OllamaError
from adapter.gateway import Gateway
from adapter.relay import Relay, relay, traced_call
from adapter.routes.chat_generate import json_response
from adapter.schemas import read_json_object
from adapter.translate.models import fim_template, local_rfc3339, ps_listing, show_response, tags_listing
from vision.proxy import models_of, request_body

log = logging.getLogger("adapter.routes.models")

# /api/ps "expires_at" for a model that never unloads: Ollama's keep-alive "forever" lands ~292 years out.
_FOREVER_SECONDS = 292 * 365 * 24 * 3600


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running", media_type="text/plain; charset=utf-8")


async def version(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return json_response({"version": gw.settings.adapter_ollama_version})


async def tags(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    router = gw.router
    await router.refresh(wait=False)
    names = router.vllm_names()
    modified = {n.upstream_id: local_rfc3339(router.first_seen(n.backend, n.upstream_id)) for n in names}
    vision_models = router.vision_listing.models
    models = tags_listing(names, modified, vision_models, router.ollama_entries(), router.catalog.discover)
    return json_response({"models": models})


async def show(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    body = await read_json_object(request, gw.settings.adapter_max_body_bytes)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("model is required")
    facts = facts_of(request)
    facts.model = name
    try:
        route = await gw.router.resolve(name)
    except ModelNotFound:
        raise OllamaError(404, f"model '{name}' not found") from None
    facts.backend, facts.model_label = route.backend, route.upstream_model
    if not route.on_vllm:
        how = Relay([gw.vision], gw.vision_timeouts, gw.metrics, "ollama")
        return await relay(request, how, "POST", "/api/show", request_body(body, route.upstream_model), stream=False)
    fim = route.entry.fim if route.entry is not None else None
    return json_response(
        show_response(
            route.upstream_model,
            local_rfc3339(gw.router.first_seen(route.backend, route.upstream_model)),
            context_length=await gw.router.context_length_of(route),
            capabilities=list(route.capabilities),
            family=route.entry.family if route.entry is not None else None,
            template=fim_template(*FIM_TEMPLATES[fim]) if fim else None,
        )
    )


async def ps(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    router = gw.router
    listing = router.refresh(wait=False, vision=False)
    _, ollama_running = await asyncio.gather(listing, _ollama_running(gw, facts_of(request)))
    names = router.vllm_names()
    expires = local_rfc3339(time.time() + _FOREVER_SECONDS)
    return json_response({"models": ps_listing(names, expires, ollama_running)})


async def _ollama_running(gw: Gateway, facts: RequestFacts) -> list[dict[str, object]]:
    vision = gw.vision.upstream
    try:
        with traced_call(facts, vision, "ollama", "GET", "/api/ps") as call:
            response = await vision.send("GET", "/api/ps", headers=call.headers, read_timeout=5.0)
            call.status = response.status_code
            return models_of(await vision.read_json(response, "/api/ps"))
    except OllamaError as exc:
        log.warning("Ollama Vision /api/ps unavailable: %s", exc.message)
        return []
