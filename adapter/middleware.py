"""One pure-ASGI middleware for what every request shares: request id, origin and API-key checks
(which tenant a key belongs to), CORS headers, metrics, the structured access-log line, and with
tracing on the request's server span.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched, chunk by chunk.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapter.config import Settings
from adapter.context import FACTS_KEY, RequestFacts, Tracing
from adapter.errors import Dialect, error_body, error_body_for
from adapter.metrics import Metrics
from adapter.streaming import WATCH_KEY
from adapter.tenants import KeyRing

access_log = logging.getLogger("adapter.access")

# Ollama's default allowed origins (envconfig.AllowedOrigins): local hosts on any port, and the
# app/webview schemes of desktop apps and editors. ADAPTER_ORIGINS adds to them (like OLLAMA_ORIGINS).
_DEFAULT_ORIGIN = re.compile(
    r"^(https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?"
    r"|app://.*|file://.*|tauri://.*|vscode-webview://.*|vscode-file://.*)$",
    re.IGNORECASE,
)
_OPEN_PATHS = ("/", "/health")
# Probes and scrapes, every few seconds: spans of them would only bury the requests worth following.
_UNTRACED = ("/", "/health", "/metrics")
_CORS_HEADERS = [
    (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
    (
        b"access-control-allow-headers",
        b"Authorization, Content-Type, User-Agent, Accept, X-Requested-With, X-Request-ID, "
        b"OpenAI-Beta, x-stainless-arch, x-stainless-async, x-stainless-lang, x-stainless-os, "
        b"x-stainless-package-version, x-stainless-runtime, x-stainless-runtime-version, x-stainless-retry-count",
    ),
    (b"access-control-max-age", b"43200"),
]


def origin_allowed(origin: str, extra: list[str]) -> bool:
    if _DEFAULT_ORIGIN.match(origin):
        return True
    for pattern in extra:
        if pattern == "*" or pattern == origin:
            return True
        if "*" in pattern and re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), origin):
            return True
    return False


def dialect_of(path: str) -> Dialect:
    """The error shape a client of this path understands."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai" if path.startswith("/v1/") else "ollama"


def endpoint_label(path: str) -> str:
    """Bounded label values: the route, not the raw path (blob digests would explode cardinality)."""
    if path.startswith("/api/blobs/"):
        return "/api/blobs"
    return path if len(path) < 40 else path[:40]


class GatewayMiddleware:
    def __init__(
        self, app: ASGIApp, settings: Settings, metrics: Metrics, keys: KeyRing, tracing: Tracing | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.origins = settings.adapter_origins
        self.keys = keys
        self.tracing = tracing
        self.access_log = settings.adapter_access_log

    async def _reply(self, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json; charset=utf-8"), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = ""
        origin = ""
        authorization = b""
        traceparent = tracestate = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key" and not authorization:  # Anthropic's clients send their key here
                authorization = b"Bearer " + value
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                tracestate = value.decode("latin-1")
        request_id = request_id or secrets.token_hex(12)
        facts = RequestFacts(request_id, endpoint_label(scope["path"]))
        scope.setdefault("state", {})[FACTS_KEY] = facts
        extra_headers = [(b"x-request-id", request_id.encode("latin-1"))]
        path: str = scope["path"]
        status_holder = [0]

        if origin:
            if not origin_allowed(origin, self.origins):
                status_holder[0] = 403
                await self._reply(send, 403, error_body(f"origin {origin!r} is not allowed"), extra_headers)
                self._record(scope, facts, 403, start)
                return
            extra_headers += [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            if scope["method"] == "OPTIONS":
                await send({"type": "http.response.start", "status": 204, "headers": extra_headers + _CORS_HEADERS})
                await send({"type": "http.response.body", "body": b""})
                return

        if self.tracing is not None and path not in _UNTRACED:
            facts.trace = self.tracing.start_request(scope["method"], facts.endpoint, traceparent, tracestate)

        keys = self.keys.keys
        if keys is not None and path not in _OPEN_PATHS:
            token = authorization[7:].strip() if authorization[:7].lower() == b"bearer " else b""
            tenant = keys.lookup(token) if token else None
            if tenant is None:
                status_holder[0] = 401
                body = error_body_for(dialect_of(path), 401, "unauthorized")
                await self._reply(send, 401, body, [*extra_headers, (b"www-authenticate", b"Bearer")])
                self._record(scope, facts, 401, start)
                return
            facts.tenant, facts.cache_salt = tenant.name, tenant.cache_salt

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = list(message.get("headers", ())) + extra_headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            watch = scope["state"].get(WATCH_KEY)
            if watch is not None:  # a server that never reports the end (some test transports)
                watch.stop()
            self._record(scope, facts, status_holder[0] or 500, start)

    def _record(self, scope: Scope, facts: RequestFacts, status: int, start: float) -> None:
        elapsed = time.perf_counter() - start
        path = scope["path"]
        if facts.trace is not None:
            facts.trace.end(facts, status)
        if path in ("/metrics", "/health"):
            return
        labels = (facts.endpoint, facts.model_label, facts.backend, str(status), facts.tenant_label)
        self.metrics.requests.labels(*labels).inc()
        self.metrics.latency.labels(facts.endpoint, facts.backend).observe(elapsed)
        if self.access_log and access_log.isEnabledFor(logging.INFO):
            record = {
                "request_id": facts.request_id,
                "method": scope["method"],
                "path": path,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "model": facts.model,
                "backend": facts.backend,
                "replica": facts.replica,
                "stream": facts.stream,
                "prompt_tokens": facts.prompt_tokens,
                "completion_tokens": facts.completion_tokens,
                "fallback": facts.fallback,
                "tenant": facts.tenant,
                "client": (scope.get("client") or ("", 0))[0],
            }
            access_log.info(orjson.dumps({k: v for k, v in record.items() if v is not None}).decode())
