"""POST /api/chat and /api/generate: parse, route, translate, call vLLM, stream back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response

from adapter.catalog import FIM_TEMPLATES
from adapter.errors import BadRequest, OllamaError, UpstreamTimeout
from adapter.gateway import Gateway
from adapter.routing import Route
from adapter.schemas import ChatRequest, GenerateRequest, keep_alive_seconds, model_name, read_json_object, validate
from adapter.streaming import StreamResponse, ndjson_line
from adapter.translate.requests import (
    ollama_chat_to_openai,
    ollama_generate_to_openai_chat,
    ollama_generate_to_openai_completion,
)
from adapter.translate.responses import (
    StreamTranslator,
    Target,
    Timing,
    load_response,
    openai_response_to_ollama,
    rfc3339_utc,
)
from adapter.upstream import iter_sse_json
from vision.proxy import forward

T = TypeVar("T")
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
    messages = body.get("messages") or []
    has_images = any(m.get("images") for m in messages)
    if route.backend == "ollama" or (has_images and "vision" not in route.capabilities):
        return await _to_vision(gw, "/api/chat", body, route)
    _check_capabilities(model, route, body)
    if not messages:
        return json_response(load_response(model, rfc3339_utc(), "chat", unload=keep_alive == 0))
    payload = ollama_chat_to_openai(body, route.upstream_model, stream, route.request_defaults)
    return await _call_vllm(gw, request, "/v1/chat/completions", payload, model, "chat", stream, timing, body)


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
    if route.backend == "ollama" or (body.get("images") and "vision" not in route.capabilities):
        return await _to_vision(gw, "/api/generate", body, route)
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
    return await _call_vllm(gw, request, path, payload, model, "generate", stream, timing, body)


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


async def _to_vision(gw: Gateway, path: str, body: dict[str, Any], route: Route) -> Response:
    if gw.vision is None:
        raise OllamaError(503, "this request needs Ollama Vision, which is not configured")
    if route.backend == "ollama" and body.get("model") != route.upstream_model:
        body = {**body, "model": route.upstream_model}
        body.pop("name", None)
    return await forward(gw.vision, "POST", path, json_body=body)


async def _until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await the upstream call, but give up (and so close the upstream request) if the client
    leaves first: a non-streaming request must not hold a vLLM slot for nobody either."""
    result: list[T] = []
    failure: list[BaseException] = []

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            try:
                result.append(await awaitable)
            except Exception as exc:  # re-raised below, outside the task group (no ExceptionGroup)
                failure.append(exc)
            tg.cancel_scope.cancel()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(run)
        tg.start_soon(watch)
    if failure:
        raise failure[0]
    if not result:
        raise OllamaError(499, "request canceled")
    return result[0]


async def _call_vllm(
    gw: Gateway,
    request: Request,
    path: str,
    payload: dict[str, Any],
    model: str,
    target: Target,
    stream: bool,
    timing: Timing,
    body: dict[str, Any],
) -> Response:
    settings = gw.settings
    logprobs = bool(body.get("logprobs"))
    timing.upstream = time.perf_counter_ns()
    if not stream:

        async def whole() -> dict[str, Any]:
            response = await gw.vllm.post_json(path, payload, read_timeout=settings.adapter_total_timeout)
            return await gw.vllm.read_json(response)

        data = await _until_disconnect(request, whole())
        timing.end = time.perf_counter_ns()
        try:
            out = openai_response_to_ollama(data, model, target, rfc3339_utc(), timing, logprobs)
        except ValueError as exc:
            raise OllamaError(502, str(exc)) from None
        return json_response(out)

    # Headers come back at once; the read timeout then bounds the wait for each event, the first
    # token included.
    response = await gw.vllm.post_json(path, payload, read_timeout=settings.adapter_first_token_timeout)
    translator = StreamTranslator(model, target, logprobs)
    total = settings.adapter_total_timeout
    deadline = time.monotonic() + total if total else None

    async def chunks() -> AsyncIterator[bytes]:
        async for event in iter_sse_json(response):
            out = translator.feed(event, rfc3339_utc())
            if out:
                if not timing.first:
                    timing.first = time.perf_counter_ns()
                yield b"".join(ndjson_line(c) for c in out) if len(out) > 1 else ndjson_line(out[0])
            if deadline is not None and time.monotonic() > deadline:
                raise UpstreamTimeout(gw.vllm.name, f"total time limit of {total:g} s reached")
        timing.end = time.perf_counter_ns()
        yield b"".join(ndjson_line(c) for c in translator.final(rfc3339_utc(), timing))

    return StreamResponse(chunks(), on_close=response.aclose, backend=gw.vllm.name)
