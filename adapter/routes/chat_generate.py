"""POST /api/chat and /api/generate: parse, route, translate, call vLLM, stream back."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from adapter.catalog import FIM_TEMPLATES
from adapter.errors import BadRequest, OllamaError, UpstreamTimeout, UpstreamUnavailable
from adapter.gateway import Gateway
from adapter.routing import Route
from adapter.schemas import (
    ChatRequest,
    GenerateRequest,
    keep_alive_seconds,
    model_name,
    read_json_object,
    validate,
)
from adapter.streaming import StreamResponse, ndjson_line, until_disconnect
from adapter.translate.requests import (
    ollama_chat_to_openai,
    ollama_generate_to_openai_chat,
    ollama_generate_to_openai_completion,
)
from adapter.translate.responses import (
    StreamTranslator,
    Target,
    Timing,
    UpstreamStreamError,
    load_response,
    openai_response_to_ollama,
    rfc3339_utc,
)
from adapter.upstream import iter_sse_batches
from vision.proxy import forward

T = TypeVar("T")
# What a translator raises on a body that is JSON but not vLLM's shape (a list where a dict belongs...).
MALFORMED = (AttributeError, TypeError, KeyError, IndexError)
JSON_UTF8 = "application/json; charset=utf-8"


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=JSON_UTF8)


async def chat(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    timing = Timing(start=time.perf_counter_ns())
    body = validate(ChatRequest, await read_json_object(request, gw.settings.adapter_max_body_bytes))
    model = model_name(body)
    stream = body.get("stream") is not False
    keep_alive = keep_alive_seconds(body.get("keep_alive"))
    route = await gw.registry.resolve(model)
    _describe_request(request, model, route, stream)
    messages = body.get("messages") or []
    has_images = any(m.get("images") for m in messages)
    if route.backend == "ollama" or (has_images and "vision" not in route.capabilities):
        return await _to_vision(gw, request, "/api/chat", body, route)
    _check_capabilities(model, route, body)
    if not messages:
        return json_response(load_response(model, rfc3339_utc(), "chat", unload=keep_alive == 0))
    payload = ollama_chat_to_openai(body, route.upstream_model, stream, route.request_defaults, route.strict_tools)
    call = VllmCall("/v1/chat/completions", payload, model, "chat", stream, timing, bool(body.get("logprobs")))
    return await _call_vllm(gw, request, call, body, route)


async def generate(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    timing = Timing(start=time.perf_counter_ns())
    body = validate(GenerateRequest, await read_json_object(request, gw.settings.adapter_max_body_bytes))
    model = model_name(body)
    stream = body.get("stream") is not False
    keep_alive = keep_alive_seconds(body.get("keep_alive"))
    if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        raise BadRequest("raw mode does not support template, system, or context")
    route = await gw.registry.resolve(model)
    _describe_request(request, model, route, stream)
    if route.backend == "ollama" or (body.get("images") and "vision" not in route.capabilities):
        return await _to_vision(gw, request, "/api/generate", body, route)
    _check_capabilities(model, route, body)
    prompt, suffix = body.get("prompt") or "", body.get("suffix") or ""
    if not prompt and not suffix:
        return json_response(load_response(model, rfc3339_utc(), "generate", unload=keep_alive == 0))
    if suffix:
        payload = ollama_generate_to_openai_completion(
            body, route.upstream_model, stream, prompt=fim_prompt(model, route, prompt, suffix)
        )
        path = "/v1/completions"
    elif body.get("raw"):
        payload = ollama_generate_to_openai_completion(body, route.upstream_model, stream)
        path = "/v1/completions"
    else:
        payload = ollama_generate_to_openai_chat(body, route.upstream_model, stream, route.request_defaults)
        path = "/v1/chat/completions"
    call = VllmCall(path, payload, model, "generate", stream, timing, bool(body.get("logprobs")))
    return await _call_vllm(gw, request, call, body, route)


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


def _describe_request(request: Request, model: str, route: Route, stream: bool) -> None:
    """What the access log and metrics say about this request (labels stay bounded: the upstream id)."""
    request.state.model = model
    request.state.model_label = route.upstream_model
    request.state.backend = route.backend
    request.state.stream = stream


async def _to_vision(
    gw: Gateway, request: Request, path: str, body: dict[str, Any], route: Route, *, as_model: str | None = None
) -> Response:
    """Forward to Ollama Vision. `as_model`: a fallback, whose answers must name the requested model."""
    if gw.vision is None:
        raise OllamaError(503, "this request needs Ollama Vision, which is not configured")
    request.state.backend = "ollama"
    target = as_model or route.upstream_model
    if (route.backend == "ollama" or as_model) and body.get("model") != target:
        body = {**body, "model": target}
        body.pop("name", None)
    return await forward(
        gw.vision,
        "POST",
        path,
        json_body=body,
        request_id=request.state.request_id,
        rewrite_model=request.state.model if as_model else None,
    )


async def _until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await the upstream call, but give up (and so close the upstream request) if the client
    leaves first: a non-streaming request must not hold a vLLM slot for nobody either."""
    result, gone = await until_disconnect(request.receive, awaitable)
    if gone:
        raise OllamaError(499, "request canceled")
    return result  # type: ignore[return-value]


@dataclass(slots=True)
class VllmCall:
    """One translated request for vLLM, and what translating its answer back needs."""

    path: str
    payload: dict[str, Any]
    model: str  # as the client named it: echoed in every answer
    target: Target
    stream: bool
    timing: Timing
    logprobs: bool


async def _call_vllm(gw: Gateway, request: Request, call: VllmCall, body: dict[str, Any], route: Route) -> Response:
    target = call.target
    fallback = gw.fallback_for(route)
    if fallback:
        return await _fallback(gw, request, target, body, route, fallback)
    try:
        return await _vllm_exchange(gw, request, call)
    except UpstreamUnavailable as exc:
        gw.metrics.upstream_errors.labels("vllm", "connect").inc()
        gw.monitor.mark_unreachable("vllm", exc.message)
        fallback = gw.fallback_for(route, connect_failed=True)
        if fallback:
            return await _fallback(gw, request, target, body, route, fallback)
        if gw.settings.adapter_mode == "ingestion":
            raise OllamaError(503, "vLLM is unavailable (ingestion mode: no fallback)") from None
        raise
    except OllamaError as exc:
        if exc.status >= 500:
            gw.metrics.upstream_errors.labels("vllm", "timeout" if exc.status == 504 else f"http_{exc.status}").inc()
        raise


async def _fallback(
    gw: Gateway, request: Request, target: Target, body: dict[str, Any], route: Route, fallback: str
) -> Response:
    gw.metrics.fallbacks.labels(route.upstream_model, fallback).inc()
    request.state.fallback = fallback
    path = "/api/chat" if target == "chat" else "/api/generate"
    return await _to_vision(gw, request, path, body, route, as_model=fallback)


async def _vllm_exchange(gw: Gateway, request: Request, call: VllmCall) -> Response:
    """One request to vLLM under the limiter: the slot is held until the answer is complete (for a
    stream: until the stream ends, however it ends) and released exactly once."""
    limiter = gw.vllm.limiter
    await limiter.acquire()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            limiter.release()

    try:
        return await _vllm_request(gw, request, call, release)
    except BaseException:
        release()
        raise


async def _vllm_request(gw: Gateway, request: Request, call: VllmCall, release: Callable[[], None]) -> Response:
    path, payload, model, target, timing, logprobs = (
        call.path,
        call.payload,
        call.model,
        call.target,
        call.timing,
        call.logprobs,
    )
    settings = gw.settings
    metrics = gw.metrics
    endpoint = request.scope["path"]
    headers = {"X-Request-ID": f"{request.state.request_id}-{secrets.token_hex(4)}"}
    timing.upstream = time.perf_counter_ns()
    if not call.stream:

        async def whole() -> dict[str, Any]:
            response = await gw.vllm.post_json(
                path, payload, read_timeout=settings.adapter_total_timeout, headers=headers
            )
            return await gw.vllm.read_json(response)

        try:
            data = await _until_disconnect(request, whole())
        finally:
            release()
        timing.end = time.perf_counter_ns()
        try:
            out = openai_response_to_ollama(data, model, target, rfc3339_utc(), timing, logprobs)
            _count_tokens(request, gw, data.get("usage"))
        except ValueError as exc:  # UpstreamStreamError included: a tool call cut off, an error body
            raise OllamaError(502, str(exc)) from None
        except MALFORMED as exc:
            raise OllamaError(
                502, f"{gw.vllm.name} sent a response of an unexpected shape ({type(exc).__name__})"
            ) from None
        return json_response(out)

    # Headers come back at once; the read timeout then bounds the wait for each event, the first
    # token included.
    response = await gw.vllm.post_json(
        path, payload, read_timeout=settings.adapter_first_token_timeout, headers=headers
    )
    translator = StreamTranslator(model, target, logprobs)
    total = settings.adapter_total_timeout
    deadline = time.monotonic() + total if total else None
    ttft = metrics.ttft.labels(endpoint, "vllm")

    async def chunks() -> AsyncIterator[bytes]:
        # One write per upstream read: the events that arrived together are answered together.
        async for events in iter_sse_batches(response):
            created = rfc3339_utc()
            try:
                out = [line for event in events for line in map(ndjson_line, translator.feed(event, created))]
            except MALFORMED as exc:
                raise UpstreamStreamError(
                    f"{gw.vllm.name} sent a chunk of an unexpected shape ({type(exc).__name__})"
                ) from None
            if out:
                if not timing.first:
                    timing.first = time.perf_counter_ns()
                    ttft.observe((timing.first - timing.start) / 1e9)
                yield out[0] if len(out) == 1 else b"".join(out)
            if deadline is not None and time.monotonic() > deadline:
                raise UpstreamTimeout(gw.vllm.name, f"total time limit of {total:g} s reached")
        timing.end = time.perf_counter_ns()
        _count_tokens(request, gw, translator.usage)
        yield b"".join(ndjson_line(c) for c in translator.final(rfc3339_utc(), timing))

    async def close() -> None:
        await response.aclose()
        release()

    return StreamResponse(chunks(), on_close=close, backend=gw.vllm.name)


def _count_tokens(request: Request, gw: Gateway, usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    request.state.prompt_tokens, request.state.completion_tokens = prompt, completion
    label = request.state.model_label
    gw.metrics.prompt_tokens.labels(label, "vllm").inc(prompt)
    gw.metrics.completion_tokens.labels(label, "vllm").inc(completion)
