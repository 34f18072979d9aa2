"""create_app(settings) -> Starlette: the routes table, the lifespan, error handling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from adapter.catalog import Catalog, CatalogError, load_catalog
from adapter.config import Settings
from adapter.context import Tracing
from adapter.errors import OllamaError, error_response, response_for
from adapter.gateway import Gateway
from adapter.metrics import Metrics
from adapter.middleware import GatewayMiddleware
from adapter.process import prepare
from adapter.routes import chat_generate, models, openai_compat, ops, passthrough
from adapter.streaming import SERVER_SEND
from adapter.tenants import KeyRing, TenantsError

log = logging.getLogger("adapter")


class GatewayApp(Starlette):
    """Starlette, keeping the server's own `send` in the scope for streamed bodies
    (adapter.streaming.StreamResponse)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def reload_on_hangup(gateway: Gateway, path: Path | None, keys: KeyRing) -> bool:
    """SIGHUP reloads ADAPTER_MODELS_FILE and ADAPTER_API_KEYS_FILE (with the tenants' secrets: a
    rotated one takes effect). Signals reach only the main thread's loop (tests run apps in other
    threads): whether the handler is installed."""
    if (path is None and keys.keys_file is None) or threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()

    def hangup() -> None:
        if keys.keys_file is not None:
            reload_keys(keys)
        if path is not None:
            gateway.spawn(gateway.reload(path))

    try:
        loop.add_signal_handler(signal.SIGHUP, hangup)
    except (NotImplementedError, RuntimeError):
        return False
    return True


def reload_keys(keys: KeyRing) -> bool:
    """A bad keys file is refused and the keys in force keep working, as for the catalog."""
    try:
        keys.reload()
    except TenantsError as exc:
        log.error("keys reload refused, still using the previous keys: %s", exc)
        return False
    log.info("keys reloaded from %s: %d tenants", keys.keys_file, len(keys.keys.names) if keys.keys else 0)
    return True


def start_tracing(settings: Settings) -> Tracing | None:
    """LLM_TRACE_EXPORTER=otlp: the OpenTelemetry SDK, imported only then (off, nothing is loaded)."""
    if settings.llm_trace_exporter != "otlp":
        return None
    from adapter.otel import OtelTracing

    return OtelTracing()


def app_from_environment() -> Starlette:
    """The app each worker process builds (ADAPTER_WORKERS > 1): settings from the environment the
    main process validated and completed."""
    # Until the lifespan installs the catalog reload, a SIGHUP (forwarded by the main process) must
    # not end the worker: that is the signal's default.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = Settings()
    prepare(settings.adapter_log_level)
    try:
        return create_app(settings)
    except (CatalogError, TenantsError) as exc:  # a worker started after a file went bad: say so in one line
        log.error("worker cannot start: %s", exc)
        raise SystemExit(1) from None


def routes() -> list[Route]:
    # Starlette tries routes in order: the generation routes, which nearly every request is, first.
    return [
        Route("/api/chat", chat_generate.chat, methods=["POST"]),
        Route("/api/generate", chat_generate.generate, methods=["POST"]),
        Route("/", models.root, methods=["GET", "HEAD"]),
        Route("/health", ops.health, methods=["GET", "HEAD"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/api/version", models.version, methods=["GET", "HEAD"]),
        Route("/api/tags", models.tags, methods=["GET", "HEAD"]),
        Route("/api/ps", models.ps, methods=["GET"]),
        Route("/api/show", models.show, methods=["POST"]),
        Route("/api/embed", passthrough.embed, methods=["POST"]),
        Route("/api/embeddings", passthrough.embeddings, methods=["POST"]),
        Route("/api/pull", passthrough.pull, methods=["POST"]),
        Route("/api/push", passthrough.push, methods=["POST"]),
        Route("/api/create", passthrough.create, methods=["POST"]),
        Route("/api/copy", passthrough.copy, methods=["POST"]),
        Route("/api/delete", passthrough.delete, methods=["DELETE"]),
        Route("/api/blobs/{digest}", passthrough.blobs, methods=["HEAD", "POST"]),
        Route("/v1/chat/completions", openai_compat.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_compat.completions, methods=["POST"]),
        Route("/v1/embeddings", openai_compat.embeddings, methods=["POST"]),
        Route("/v1/responses", openai_compat.responses, methods=["POST"]),
        Route("/v1/messages", openai_compat.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", openai_compat.count_tokens, methods=["POST"]),
        Route("/v1/models", openai_compat.list_models, methods=["GET"]),
    ]


async def _ollama_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OllamaError)
    return response_for(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Ollama's router (gin) answers unknown routes and methods in plain text.
    if exc.status_code == 404:
        return PlainTextResponse("404 page not found", status_code=404)
    if exc.status_code == 405:
        return PlainTextResponse("405 method not allowed", status_code=405)
    return error_response(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}")


def create_app(
    settings: Settings | None = None, catalog: Catalog | None = None, *, force_canary: bool = False
) -> Starlette:
    """The gateway as an ASGI app. `force_canary` (canary-check only): every request for a model
    with a canary goes to the canary backend."""
    settings = settings or Settings()
    if catalog is None and settings.adapter_models_file is not None:
        catalog = load_catalog(settings.adapter_models_file)
    api_key = settings.adapter_api_key.get_secret_value() if settings.adapter_api_key else None
    keys = KeyRing(settings.adapter_api_keys_file, api_key)
    tracing = start_tracing(settings)

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = Gateway(settings, metrics, catalog, workers=settings.adapter_workers, force_canary=force_canary)
        app.state.gateway = gateway
        gateway.monitor.start()
        gateway.spawn(gateway.router.refresh())  # the model lists, before the first client asks
        listening = reload_on_hangup(gateway, settings.adapter_models_file, keys)
        try:
            yield
        finally:
            if listening:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await gateway.aclose()
            if tracing is not None:
                # In a thread: the last export may wait on an unreachable collector (bounded).
                await asyncio.to_thread(tracing.shutdown)

    app = GatewayApp(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={OllamaError: _ollama_error, HTTPException: _http_error, Exception: _unexpected},
        middleware=[Middleware(GatewayMiddleware, settings=settings, metrics=metrics, keys=keys, tracing=tracing)],
    )
    app.state.settings = settings
    app.state.keys = keys
    return app
