"""Pass-through answers: a request sent as it is, the upstream's answer returned untouched.

Used for what the gateway does not translate: Ollama Vision (vision, embeddings, model management,
fallbacks) and vLLM's own OpenAI-style endpoints (/v1/...). A stream (NDJSON or SSE) is relayed as
its bytes arrive; any other answer is read whole first, within the total time limit, so that a
failure while reading it is still an error status rather than a body cut short. Upstream error
statuses become the gateway's own errors (see adapter.errors.client_status_for).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from adapter.balancing import Replica
from adapter.context import RequestFacts, facts_of
from adapter.errors import Dialect, UpstreamHTTPError
from adapter.exchange import Exchange, Timeouts, open_exchange, relayed_bytes, whole_body
from adapter.metrics import Metrics
from adapter.streaming import NDJSON, StreamResponse, ndjson_error_line, sse_error_event, until_disconnect
from adapter.upstream import Upstream, UpstreamResponse
from vision.proxy import model_rewritten, with_model

# Response headers worth keeping; hop-by-hop and length headers are the server's business.
KEPT_HEADERS = ("retry-after", "location")
STREAM_TYPES = ("application/x-ndjson", "text/event-stream")


@dataclass(frozen=True, slots=True)
class Relay:
    """Where and how: the replicas to try (best first), their time limits, the errors' dialect."""

    candidates: Sequence[Replica]
    timeouts: Timeouts
    metrics: Metrics
    dialect: Dialect


async def relay(
    request: Request,
    how: Relay,
    method: str,
    path: str,
    body: bytes | None,
    *,
    stream: bool,
    rewrite_model: str | None = None,
) -> Response:
    """Send and answer with the upstream's answer. `stream`: the client asked for a stream, so each
    wait for data is bounded by the first-token timeout; `rewrite_model`: a fallback model answers,
    and its answers must name the model the client asked for."""
    facts = facts_of(request)

    async def start() -> tuple[Exchange, bytes | None]:
        exchange = await open_exchange(
            how.candidates,
            method,
            path,
            body,
            facts=facts,
            timeouts=how.timeouts,
            read_timeout=how.timeouts.first_token if stream else None,
            metrics=how.metrics,
        )
        if _media_type(exchange.response).startswith(STREAM_TYPES):
            return exchange, None
        try:
            return exchange, await whole_body(exchange)
        finally:
            exchange.close()

    exchange, whole = await until_disconnect(request.scope, request.receive, start())
    response = exchange.response
    media_type = _media_type(response)
    headers = {name.lower(): value for name, value in response.headers.items() if name.lower() in KEPT_HEADERS}
    if whole is not None:
        if rewrite_model is not None:
            whole = with_model(whole, rewrite_model)
        return Response(whole, response.status_code, headers=headers, media_type=media_type)
    chunks: AsyncIterator[bytes] = relayed_bytes(exchange)
    if rewrite_model is not None:
        chunks = model_rewritten(chunks, rewrite_model)
    error_line: Callable[[str], bytes]
    error_line = ndjson_error_line if media_type.startswith(NDJSON.decode()) else sse_error_event(how.dialect)
    return StreamResponse(
        chunks,
        media_type=media_type.encode("latin-1"),
        status=response.status_code,
        headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        on_close=exchange.close,
        error_line=error_line,
    )


def _media_type(response: UpstreamResponse) -> str:
    return response.headers.get("content-type", "application/json; charset=utf-8")


@dataclass(slots=True)
class TracedCall:
    """What a call made outside an exchange sends (trace context) and how it ended (`status`)."""

    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None


@contextmanager
def traced_call(facts: RequestFacts, upstream: Upstream, backend: str, method: str, path: str) -> Iterator[TracedCall]:
    """A client span around an upstream call of this request that needs no exchange (a blob upload,
    vLLM's /tokenize, Ollama Vision's /api/ps); with tracing off, empty headers and nothing else."""
    if facts.trace is None:
        yield TracedCall()
        return
    span = facts.trace.upstream_call(upstream.name, upstream.base_url, backend, method, path)
    call = TracedCall(span.headers)
    try:
        yield call
    except BaseException as exc:
        status = exc.upstream_status if isinstance(exc, UpstreamHTTPError) else None
        span.end(status, type(exc).__name__ if status is None else None)
        raise
    span.end(call.status)
