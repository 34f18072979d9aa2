"""OpenAI- and Anthropic-style endpoints on the gateway, as Ollama offers them (/v1/...).

vLLM serves them natively, so text models go straight to vLLM and the answer (JSON or SSE) comes
back untouched: no translation, the fastest path. Embeddings (unless a vLLM model embeds) and image
requests for models that cannot see go to Ollama Vision's own /v1 endpoints. Errors are in each
API's own shape: OpenAI's for chat, completions, embeddings and responses, Anthropic's for messages.
"""

from __future__ import annotations

import time

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from adapter.context import facts_of
from adapter.errors import Dialect, ModelNotFound, OllamaError, UpstreamUnavailable, response_for
from adapter.gateway import Gateway
from adapter.relay import Relay, relay
from adapter.schemas import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    OpenAIChatRequest,
    OpenAICompletionRequest,
    OpenAIEmbeddingRequest,
    ResponsesRequest,
    read_json_object,
    validate,
)
from adapter.translate.models import openai_models_listing
from adapter.translate.requests import affinity_key, openai_request_has_images, with_cache_salt


async def _call(request: Request, path: str, schema: type[BaseModel], dialect: Dialect) -> Response:
    gw: Gateway = request.app.state.gateway
    facts = facts_of(request)
    try:
        body = validate(schema, await read_json_object(request, gw.settings.adapter_max_body_bytes))
        model: str = body["model"]
        stream = body.get("stream") is True
        facts.model, facts.stream = model, stream
        try:
            route = await gw.router.route(model, images=openai_request_has_images(body))
        except ModelNotFound:
            raise OllamaError(404, f"model '{model}' not found") from None
        to_vision = route.backend == "ollama" or (path == "/v1/embeddings" and "embedding" not in route.capabilities)
        if to_vision:
            facts.backend, facts.model_label = "ollama", route.upstream_model
            if route.backend == "ollama" and body["model"] != route.upstream_model:
                body = {**body, "model": route.upstream_model}
            how = Relay([gw.vision], gw.vision_timeouts, gw.metrics, dialect)
        else:
            facts.backend, facts.model_label = route.backend, route.upstream_model
            candidates = gw.router.replicas_for(route, affinity_key(body))
            body = with_cache_salt({**body, "model": route.upstream_model}, facts.cache_salt)
            if body.get("tools") == []:
                del body["tools"]  # vLLM 0.32 rejects an empty list
            how = Relay(candidates, gw.timeouts, gw.metrics, dialect)
        try:
            return await relay(request, how, "POST", path, orjson.dumps(body), stream=stream)
        except UpstreamUnavailable as exc:
            raise gw.router.unavailable(exc) if route.on_vllm and not to_vision else exc from None
    except OllamaError as exc:
        return response_for(exc, dialect)


async def chat_completions(request: Request) -> Response:
    return await _call(request, "/v1/chat/completions", OpenAIChatRequest, "openai")


async def completions(request: Request) -> Response:
    return await _call(request, "/v1/completions", OpenAICompletionRequest, "openai")


async def embeddings(request: Request) -> Response:
    return await _call(request, "/v1/embeddings", OpenAIEmbeddingRequest, "openai")


async def responses(request: Request) -> Response:
    """The OpenAI Responses API (Codex-style tools), which vLLM serves natively."""
    return await _call(request, "/v1/responses", ResponsesRequest, "openai")


async def messages(request: Request) -> Response:
    """The Anthropic Messages API (Claude Code), which vLLM serves natively."""
    return await _call(request, "/v1/messages", AnthropicMessagesRequest, "anthropic")


async def count_tokens(request: Request) -> Response:
    """Claude Code asks this before a turn; vLLM counts with the model's own template."""
    return await _call(request, "/v1/messages/count_tokens", AnthropicCountTokensRequest, "anthropic")


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    router = gw.router
    await router.refresh(wait=False)
    names = router.vllm_names()
    created = {n.upstream_id: int(router.first_seen(n.backend, n.upstream_id)) for n in names}
    vision_models = router.vision_listing.models
    data = openai_models_listing(names, created, vision_models, router.ollama_entries(), int(time.time()))
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")
