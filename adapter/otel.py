"""OpenTelemetry tracing (LLM_TRACE_EXPORTER=otlp): a server span per request, a client span per
upstream call, W3C trace context from the client to the upstreams.

Imported only when tracing is on (adapter.tracing decides), so a gateway without it never loads
the SDK. Spans open and close once per request and once per upstream call, never per chunk; the
attributes are set when the answer is done, from the request's facts. Spans carry no prompt and no
answer: names, counts, timings and where the request went.

Export is batched in a background thread (BatchSpanProcessor) to OTLP over HTTP/protobuf, configured
by the standard OTEL_EXPORTER_OTLP_* variables and OTEL_SERVICE_NAME. An unreachable collector
costs requests nothing: full queues drop spans, and lost batches are logged once, not per span.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from adapter.context import RequestFacts

log = logging.getLogger("adapter.tracing")

DEFAULT_SERVICE_NAME = "vllm-ollama-adapter"
# What each endpoint is, in the gen_ai semantic conventions' words (gen_ai.operation.name).
OPERATIONS = {
    "/api/chat": "chat",
    "/api/generate": "text_completion",
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
    "/v1/embeddings": "embeddings",
}
_PROPAGATOR = TraceContextTextMapPropagator()


class _LossLoggedOnce(SpanExporter):
    """The OTLP exporter, saying once that spans are being lost (the exporter itself would log every
    failed batch, which during a collector outage is a log line per batch)."""

    def __init__(self, exporter: SpanExporter, endpoint: str) -> None:
        self.exporter = exporter
        self.endpoint = endpoint
        self.lost_batches = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            with self._lock:
                self.lost_batches += 1
                first = self.lost_batches == 1
            if first:
                log.warning(
                    "tracing: spans could not be exported to %s and are dropped; further losses are not logged",
                    self.endpoint,
                )
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class UpstreamCallSpan:
    """A client span: one upstream call, from sending it to closing its answer."""

    __slots__ = ("headers", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.headers: dict[str, str] = {}
        _PROPAGATOR.inject(self.headers, context=set_span_in_context(span))

    def end(self, status: int | None, error: str | None = None) -> None:
        if status is not None:
            self.span.set_attribute("http.response.status_code", status)
        if error is not None or (status is not None and status >= 500):
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()


class ServerRequestTrace:
    """A server span: one request to the gateway, child of the client's trace when it sent one."""

    __slots__ = ("context", "span", "tracing")

    def __init__(self, tracing: OtelTracing, span: Span) -> None:
        self.tracing = tracing
        self.span = span
        self.context: Context = set_span_in_context(span)

    def upstream_call(self, name: str, url: str, backend: str, method: str, path: str) -> UpstreamCallSpan:
        span = self.tracing.tracer.start_span(
            f"{method} {path}",
            context=self.context,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "url.full": url + path,
                "server.address": url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0],
                "peer.service": name,
                "vllm_ollama_adapter.backend": backend,
                "vllm_ollama_adapter.replica": url,
            },
        )
        return UpstreamCallSpan(span)

    def end(self, facts: RequestFacts, status: int) -> None:
        span = self.span
        span.set_attributes(request_attributes(facts, status))
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


def request_attributes(facts: RequestFacts, status: int) -> dict[str, Any]:
    """The server span's attributes, from what the request turned out to be (no prompt, no answer)."""
    attributes: dict[str, Any] = {
        "http.response.status_code": status,
        "vllm_ollama_adapter.request_id": facts.request_id,
    }
    operation = OPERATIONS.get(facts.endpoint)
    if operation is not None:
        attributes["gen_ai.operation.name"] = operation
        if facts.backend != "none":
            attributes["gen_ai.provider.name"] = "ollama" if facts.backend == "ollama" else "vllm"
    optional: dict[str, Any] = {
        "gen_ai.request.model": facts.model,
        "gen_ai.response.model": facts.model_label if facts.model_label != "none" else None,
        "gen_ai.usage.input_tokens": facts.prompt_tokens,
        "gen_ai.usage.output_tokens": facts.completion_tokens,
        # vLLM's own span calls it this, so the two spans of one request read alike.
        "gen_ai.latency.time_to_first_token": facts.ttft,
        "gen_ai.response.finish_reasons": [facts.finish_reason] if facts.finish_reason else None,
        "vllm_ollama_adapter.backend": facts.backend if facts.backend != "none" else None,
        "vllm_ollama_adapter.replica": facts.replica,
        "vllm_ollama_adapter.tenant": facts.tenant,
        "vllm_ollama_adapter.fallback": facts.fallback,
        "vllm_ollama_adapter.stream": facts.stream,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes


class OtelTracing:
    """The app's tracer provider (its own, not the global one: tests run many apps in one process)."""

    def __init__(self, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
        if resource.attributes.get(SERVICE_NAME, "").startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        self.provider = TracerProvider(resource=resource)
        if exporter is None:
            otlp = OTLPSpanExporter()
            # The exporter logs every failed batch; _LossLoggedOnce says it once instead.
            logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter").setLevel(logging.CRITICAL)
            exporter = _LossLoggedOnce(otlp, getattr(otlp, "_endpoint", "the OTLP endpoint"))
        self.exporter = exporter
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("vllm_ollama_adapter")

    def start_request(self, method: str, route: str, traceparent: str, tracestate: str) -> ServerRequestTrace:
        carrier = {"traceparent": traceparent, "tracestate": tracestate} if traceparent else {}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = self.tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        )
        return ServerRequestTrace(self, span)

    def shutdown(self, grace: float = 2.0) -> None:
        """Send what is queued, waiting at most `grace` seconds: a collector that does not answer
        must not hold the gateway's exit for the exporter's retries (10 s by default)."""
        flushing = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        flushing.start()
        flushing.join(grace)
        if flushing.is_alive():
            self.exporter.shutdown()  # cuts the exporter's back-off short; the batch is dropped
            flushing.join(1.0)
