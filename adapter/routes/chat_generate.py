"""POST /api/chat and /api/generate: parse, route, translate, call vLLM, answer.

vLLM is always asked for a stream, whether the client wants one or not: a whole answer is the
stream folded together. So every answer has the same first-token timing (prompt_eval_duration), the
same timeouts and the same disconnect handling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from adapter.balancing import Replica
from adapter.catalog import FIM_TEMPLATES
from adapter.context import RequestFacts, facts_of
from adapter.errors import BadRequest, UpstreamHTTPError, UpstreamUnavailable
from adapter.exchange import Exchange, OllamaStream, ollama_whole, open_exchange
from adapter.gateway import Gateway
from adapter.relay import Relay, relay, traced_call
from adapter.routing import REPLICA_HEADER, Route
from adapter.schemas import ChatRequest, GenerateRequest, keep_alive_seconds, model_name, read_json_object, validate
from adapter.streaming import StreamResponse, until_disconnect
from adapter.translate.requests import (
    affinity_key,
    context_overflow_limit,
    history_windows,
    ollama_chat_to_openai,
    ollama_generate_to_openai_chat,
    ollama_generate_to_openai_completion,
    ollama_messages_have_images,
    with_cache_salt,
)
from adapter.translate.responses import StreamTranslator, Target, Timing, load_response, rfc3339_utc
from vision.proxy import request_body

JSON_UTF8 = "application/json; charset=utf-8"


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=JSON_UTF8)


@dataclass(slots=True)
class VllmCall:
    """One translated request for vLLM, and what translating its answer back needs."""

    path: str
    payload: dict[str, Any]
    model: str  # as the client named it: echoed in every answer
    target: Target
    stream: bool  # what the client asked for; vLLM is always asked for a stream
    timing: Timing
    logprobs: bool
    truncate: bool  # Ollama's `truncate`: drop the oldest history when the prompt does not fit


async def chat(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    timing = Timing(start=time.perf_counter_ns())
    body = validate(ChatRequest, await read_json_object(request, gw.settings.adapter_max_body_bytes))
    model = model_name(body)
    stream = body.get("stream") is not False
    keep_alive = keep_alive_seconds(body.get("keep_alive"))
    messages = body.get("messages") or []
    pin = request.headers.get(REPLICA_HEADER)
    route = await gw.router.route(model, images=ollama_messages_have_images(messages), replica=pin)
    _describe(facts_of(request), model, route, stream)
    if route.backend == "ollama":
        return await _to_vision(gw, request, "/api/chat", body, route, stream)
    _check_capabilities(model, route, body)
    if not messages:
        return json_response(load_response(model, rfc3339_utc(), "chat", unload=keep_alive == 0))
    payload = ollama_chat_to_openai(body, route.upstream_model, route.request_defaults, route.strict_tools)
    call = VllmCall(
        "/v1/chat/completions",
        payload,
        model,
        "chat",
        stream,
        timing,
        bool(body.get("logprobs")),
        body.get("truncate") is not False,
    )
    return await _answer(gw, request, route, call, body)


async def generate(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    timing = Timing(start=time.perf_counter_ns())
    body = validate(GenerateRequest, await read_json_object(request, gw.settings.adapter_max_body_bytes))
    model = model_name(body)
    stream = body.get("stream") is not False
    keep_alive = keep_alive_seconds(body.get("keep_alive"))
    if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        raise BadRequest("raw mode does not support template, system, or context")
    route = await gw.router.route(model, images=bool(body.get("images")), replica=request.headers.get(REPLICA_HEADER))
    _describe(facts_of(request), model, route, stream)
    if route.backend == "ollama":
        return await _to_vision(gw, request, "/api/generate", body, route, stream)
    _check_capabilities(model, route, body)
    prompt, suffix = body.get("prompt") or "", body.get("suffix") or ""
    if not prompt and not suffix:
        return json_response(load_response(model, rfc3339_utc(), "generate", unload=keep_alive == 0))
    if suffix:
        payload = ollama_generate_to_openai_completion(
            body, route.upstream_model, prompt=fim_prompt(model, route, prompt, suffix)
        )
        path = "/v1/completions"
    elif body.get("raw"):
        payload = ollama_generate_to_openai_completion(body, route.upstream_model)
        path = "/v1/completions"
    else:
        payload = ollama_generate_to_openai_chat(body, route.upstream_model, route.request_defaults)
        path = "/v1/chat/completions"
    logprobs = bool(body.get("logprobs"))
    call = VllmCall(path, payload, model, "generate", stream, timing, logprobs, body.get("truncate") is not False)
    return await _answer(gw, request, route, call, body)


def fim_prompt(model: str, route: Route, prefix: str, suffix: str) -> str:
    """vLLM rejects `suffix`; build the model's own fill-in-the-middle prompt instead."""
    fim = route.entry.fim if route.entry is not None else None
    if fim is None:
        raise BadRequest(f'"{model}" does not support insert (no FIM template for it in ADAPTER_MODELS_FILE)')
    begin, hole, end = FIM_TEMPLATES[fim]
    return f"{begin}{prefix}{hole}{suffix}{end}"


def _check_capabilities(model: str, route: Route, body: dict[str, Any]) -> None:
    # Only a catalog entry says what a model cannot do; discovered models are given the benefit.
    if route.entry is None or route.entry.capabilities is None:
        return
    caps = route.capabilities
    if body.get("tools") and "tools" not in caps:
        raise BadRequest(f"{model} does not support tools")
    if body.get("think") not in (None, False) and "thinking" not in caps:
        raise BadRequest(f'"{model}" does not support thinking')


def _describe(facts: RequestFacts, model: str, route: Route, stream: bool) -> None:
    """What the access log and metrics say about this request (labels stay bounded: the upstream id)."""
    facts.model = model
    facts.model_label = route.upstream_model
    facts.backend = route.backend
    facts.stream = stream
    if route.fallback:
        facts.fallback = route.upstream_model


async def _to_vision(
    gw: Gateway, request: Request, path: str, body: dict[str, Any], route: Route, stream: bool
) -> Response:
    """Forward to Ollama Vision, the model named as the client wrote it unless the gateway maps it
    (an alias, the catalog). A fallback answers in place of the requested model, and its answers name
    the requested one."""
    how = Relay([gw.vision], gw.vision_timeouts, gw.metrics, "ollama")
    rename = facts_of(request).model if route.fallback else None
    payload = request_body(body, route.upstream_model)
    return await relay(request, how, "POST", path, payload, stream=stream, rewrite_model=rename)


async def _answer(gw: Gateway, request: Request, route: Route, call: VllmCall, body: dict[str, Any]) -> Response:
    facts = facts_of(request)
    candidates = gw.router.replicas_for(route, affinity_key(call.payload))
    try:
        if call.stream:
            exchange = await until_disconnect(request.scope, request.receive, _open(gw, facts, call, candidates))
            translator = StreamTranslator(call.model, call.target, call.logprobs)
            stream = OllamaStream(exchange, translator, call.timing, facts, gw.metrics)
            return StreamResponse(stream.chunks(), push=stream.push, on_close=exchange.close)
        whole = await until_disconnect(request.scope, request.receive, _whole(gw, facts, call, candidates))
        return json_response(whole)
    except UpstreamUnavailable as exc:
        fallback = gw.router.fallback(route)
        if fallback is not None:
            gw.metrics.fallbacks.labels(route.upstream_model, fallback.upstream_model).inc()
            _describe(facts, call.model, fallback, call.stream)
            path = "/api/chat" if call.target == "chat" else "/api/generate"
            return await _to_vision(gw, request, path, body, fallback, call.stream)
        raise gw.router.unavailable(exc) from None


async def _whole(gw: Gateway, facts: RequestFacts, call: VllmCall, candidates: list[Replica]) -> dict[str, Any]:
    exchange = await _open(gw, facts, call, candidates)
    try:
        translator = StreamTranslator(call.model, call.target, call.logprobs)
        return await ollama_whole(exchange, translator, call.timing, facts, gw.metrics)
    finally:
        exchange.close()


async def _open(gw: Gateway, facts: RequestFacts, call: VllmCall, candidates: list[Replica]) -> Exchange:
    """Send the call; a prompt longer than the model's context is retried once with the oldest
    history dropped (Ollama's `truncate`), when the request allows it and there is history to drop."""
    try:
        return await _send(gw, facts, call.path, call.payload, candidates)
    except UpstreamHTTPError as exc:
        limit = context_overflow_limit(exc.message) if exc.status == 400 else None
        messages = call.payload.get("messages")
        if limit is None or not call.truncate or not messages or len(messages) < 2:
            raise
        shorter = await _fitting_history(candidates[0], facts, call.payload, limit)
        if shorter is None:
            raise  # even the newest message alone does not fit: vLLM's own 400
        return await _send(gw, facts, call.path, {**call.payload, "messages": shorter}, candidates)


async def _send(
    gw: Gateway, facts: RequestFacts, path: str, payload: dict[str, Any], candidates: list[Replica]
) -> Exchange:
    return await open_exchange(
        candidates,
        "POST",
        path,
        orjson.dumps(with_cache_salt(payload, facts.cache_salt)),
        facts=facts,
        timeouts=gw.timeouts,
        read_timeout=gw.timeouts.first_token,
        metrics=gw.metrics,
    )


async def _fitting_history(
    replica: Replica, facts: RequestFacts, payload: dict[str, Any], limit: int
) -> list[dict[str, Any]] | None:
    """The longest history (Ollama's truncation order) whose prompt leaves room for an answer, by
    asking vLLM's /tokenize: a binary search, so a few cheap calls, and only after an overflow."""
    upstream = replica.upstream
    windows = history_windows(payload["messages"])
    counted = {k: payload[k] for k in ("model", "tools", "chat_template_kwargs") if payload.get(k) is not None}
    low, high, best = 0, len(windows) - 1, None
    while low <= high:
        middle = (low + high) // 2
        counting = {**counted, "messages": windows[middle]}
        with traced_call(facts, upstream, replica.backend, "POST", "/tokenize") as traced:
            response = await upstream.post_json("/tokenize", counting, headers=traced.headers)
            traced.status = response.status_code
            answer = await upstream.read_json(response)
        count = answer.get("count") if isinstance(answer, dict) else None
        if not isinstance(count, int):
            return None
        if count < limit:
            best, high = windows[middle], middle - 1
        else:
            low = middle + 1
    return best
