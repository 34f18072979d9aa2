"""One call to an upstream server under a limiter slot: the request path's only I/O orchestration.

`open_exchange` takes a slot on the server, sends, and waits for the answer's headers, bounded by
the request's deadline. The body is then read either as vLLM's SSE events translated into Ollama
chunks (`OllamaStream`: pushed from the socket's read callback, or iterated), or relayed as bytes
(`relayed_bytes`, `whole_body`). `Exchange.close` gives back the slot and the connection exactly
once, however the request ends: finished, failed, timed out, or the client gone.

Timeouts: the connect timeout; the first-token timeout, which bounds every wait for data of a stream
(the first event included); and the total, which bounds the whole request from the moment it was
sent: one timer per request closes the upstream response when it fires, so nothing is checked per
chunk.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from adapter.balancing import Replica
from adapter.context import RequestFacts, UpstreamCall
from adapter.errors import OllamaError, UpstreamFailed, UpstreamHTTPError, UpstreamTimeout, UpstreamUnavailable
from adapter.metrics import Metrics
from adapter.streaming import DirectBody, ndjson_line
from adapter.translate.responses import StreamTranslator, Timing, rfc3339_utc, token_count, whole_response
from adapter.upstream import STREAM_ERRORS, MalformedEvent, SSEEvents, Upstream, UpstreamResponse


@dataclass(frozen=True, slots=True)
class Timeouts:
    first_token: float | None  # between two events of a stream, the first one included
    total: float | None  # the whole request


class Exchange:
    """One sent request and its answer, holding one of the upstream's limiter slots."""

    __slots__ = ("_closed", "_timer", "expired", "response", "span", "timeouts", "upstream")

    def __init__(
        self, upstream: Upstream, response: UpstreamResponse, timeouts: Timeouts, span: UpstreamCall | None = None
    ) -> None:
        self.upstream = upstream
        self.response = response
        self.timeouts = timeouts
        self.span = span  # tracing on: the call's client span, ended with the exchange
        self.expired = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None

    def start_deadline(self, deadline: float | None) -> None:
        """From now on the total time limit (a loop time) cuts the body off where it is."""
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self.response.close()  # the pending read fails (or the body ends) at once

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.response.close()
        self.upstream.limiter.release()
        if self.span is not None:
            self.span.end(self.response.status_code, "total time limit reached" if self.expired else None)

    def failure(self, exc: BaseException | None = None) -> OllamaError:
        """What a body that could not be read to its end means for the client."""
        name = self.upstream.name
        if self.expired:
            return UpstreamTimeout(name, f"total time limit of {self.timeouts.total:g} s reached")
        if isinstance(exc, OllamaError):
            return exc
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(name, f"no data for {self.timeouts.first_token or 0:g} s")
        what = type(exc).__name__ if exc is not None else "closed"
        return UpstreamFailed(name, f"connection lost in the middle of the answer ({what})")


async def open_exchange(
    candidates: Sequence[Replica],
    method: str,
    path: str,
    body: bytes | None,
    *,
    facts: RequestFacts,
    timeouts: Timeouts,
    read_timeout: float | None,
    metrics: Metrics,
    headers: dict[str, str] | None = None,
) -> Exchange:
    """Send under a slot of the first candidate that can be reached. A connection that fails before
    any byte was sent is tried once more, on the next candidate (or the same one when it is alone);
    the replica is marked unreachable at once, so the next requests skip it.

    `read_timeout` bounds each wait for data; the total time limit bounds the whole request.
    Raises UpstreamUnavailable (naming the model and the replicas tried), UpstreamFailed,
    UpstreamTimeout, UpstreamHTTPError or Busy.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.total if timeouts.total else None
    request_headers = {"Content-Type": "application/json"} if body is not None else {}
    # A short suffix: a client that reuses its request id cannot make two requests collide upstream.
    request_headers["X-Request-ID"] = f"{facts.request_id}-{secrets.token_hex(4)}"
    if headers:
        request_headers.update(headers)
    attempts = [candidates[0], candidates[1] if len(candidates) > 1 else candidates[0]]
    failures: list[str] = []
    for attempt, replica in enumerate(attempts):
        upstream = replica.upstream
        facts.replica = upstream.base_url
        span = None
        if facts.trace is not None:  # a client span per attempt; vLLM continues it from `traceparent`
            span = facts.trace.upstream_call(upstream.name, upstream.base_url, replica.backend, method, path)
            request_headers.update(span.headers)
        try:
            async with asyncio.timeout_at(deadline):
                await upstream.limiter.acquire()
                try:
                    response = await upstream.send(
                        method, path, body=body, headers=request_headers, read_timeout=read_timeout
                    )
                except BaseException as exc:
                    upstream.limiter.release()
                    if span is not None:
                        status = exc.upstream_status if isinstance(exc, UpstreamHTTPError) else None
                        span.end(status, type(exc).__name__ if status is None else None)
                    raise
        except UpstreamUnavailable as exc:
            metrics.upstream_errors.labels(replica.backend, upstream.base_url, "connect").inc()
            replica.health.mark_unreachable(exc.message, upstream.name)
            failures.append(exc.message.removeprefix(f"{upstream.name} is unavailable: "))
            if attempt + 1 < len(attempts):
                continue
            tried = "; ".join(dict.fromkeys(failures))
            raise UpstreamUnavailable(upstream.name, f"model '{facts.model}': {tried}") from None
        except TimeoutError:
            metrics.upstream_errors.labels(replica.backend, upstream.base_url, "timeout").inc()
            raise UpstreamTimeout(upstream.name, f"total time limit of {timeouts.total:g} s reached") from None
        except OllamaError as exc:
            if exc.status >= 500:
                kind = "timeout" if exc.status == 504 else f"http_{exc.status}"
                metrics.upstream_errors.labels(replica.backend, upstream.base_url, kind).inc()
            raise
        metrics.replica_requests.labels(replica.backend, upstream.base_url).inc()
        exchange = Exchange(upstream, response, timeouts, span)
        exchange.start_deadline(deadline)
        return exchange
    raise AssertionError("unreachable")


# ---- the /api path: vLLM's SSE translated into Ollama chunks -------------------------------------


def as_ndjson(chunks: list[dict[str, Any]]) -> bytes:
    # One write per upstream read: the events that arrived together are answered together.
    return ndjson_line(chunks[0]) if len(chunks) == 1 else b"".join(map(ndjson_line, chunks))


class OllamaStream:
    """Ollama's NDJSON for vLLM's SSE events: one write per network read, the final chunk last.

    Two ways to run it, with the same translation: pushed (`push`), where each read is translated
    and written inside the upstream socket's read callback, which is what the gateway does on
    uvicorn's httptools server; or as an async iterator of bytes, for any other ASGI server.

    A stream that stops before vLLM said why it stopped (no finish_reason, no [DONE]) was cut off:
    it ends with an error, never with `done: true`, so no client takes half an answer for a whole.
    """

    __slots__ = ("events", "exchange", "facts", "metrics", "timing", "translator")

    def __init__(
        self, exchange: Exchange, translator: StreamTranslator, timing: Timing, facts: RequestFacts, metrics: Metrics
    ) -> None:
        self.exchange = exchange
        self.translator = translator
        self.timing = timing
        self.facts = facts
        self.metrics = metrics
        self.events = SSEEvents(exchange.response, exchange.upstream.name)

    def _read(self, raw: bytes, write: Callable[[bytes], None]) -> None:
        """One network read of vLLM's body, answered with (at most) one write: the events that
        arrived together are answered together. A malformed event still lets the ones before it
        through, then ends the stream."""
        failure = None
        try:
            events = self.events.feed(raw)
        except MalformedEvent as exc:
            events, failure = exc.events, exc
        if events:
            if not self.timing.first:
                first_token(self.timing, self.facts, self.metrics)
            created = rfc3339_utc()
            feed = self.translator.feed
            out: list[dict[str, Any]] = []
            try:
                for event in events:
                    out += feed(event, created)
            finally:
                if out:
                    write(as_ndjson(out))  # the tokens before a failing event still reach the client
        if failure is not None:
            raise failure

    def _last(self) -> bytes:
        out: list[bytes] = []
        self._read(b"\n", out.append)  # a last event whose line had no newline
        return b"".join(out) + as_ndjson(
            finish(self.exchange, self.events, self.translator, self.timing, self.facts, self.metrics)
        )

    async def push(self, body: DirectBody) -> None:
        exchange = self.exchange
        response = exchange.response
        holding: list[asyncio.Task[None]] = []

        def hold_back() -> None:  # the client reads slower than vLLM writes: vLLM waits until it drained
            if not holding:
                response.pause_reading()
                holding.append(asyncio.get_running_loop().create_task(_resume_when_drained(body, response, holding)))

        body.on_paused = hold_back
        try:
            await response.push_body(partial(self._read, write=body.write), exchange.timeouts.first_token)
        except STREAM_ERRORS as exc:
            if not self.events.done:  # after [DONE], only the body's closing bytes were missing
                raise exchange.failure(exc) from None
        finally:
            # hold_back refers to the body: left in place, the pair would wait for the cycle
            # collector, holding the upstream response (and its buffers) with them.
            body.on_paused = None
        body.write(self._last())

    async def chunks(self) -> AsyncIterator[bytes]:
        out: list[bytes] = []
        read = self._read
        try:
            async for raw in self.exchange.response.aiter_raw():
                try:
                    read(raw, out.append)
                finally:
                    if out:
                        yield b"".join(out)
                        out.clear()
                if self.events.done:
                    # The rest is the chunked body's end: read it, so the connection can be reused.
                    await self.exchange.response.drain(0.1)
                    break
        except STREAM_ERRORS as exc:
            raise self.exchange.failure(exc) from None
        yield self._last()


async def _resume_when_drained(body: DirectBody, response: UpstreamResponse, holding: list[asyncio.Task[None]]) -> None:
    try:
        await body.drain()
    finally:
        holding.clear()
    response.resume_reading()


async def ollama_whole(
    exchange: Exchange, translator: StreamTranslator, timing: Timing, facts: RequestFacts, metrics: Metrics
) -> dict[str, Any]:
    """The whole Ollama answer for vLLM's stream, folded as Ollama folds its own."""
    events = SSEEvents(exchange.response, exchange.upstream.name)
    try:
        batch = await events.whole(lambda: first_token(timing, facts, metrics))
    except STREAM_ERRORS as exc:
        raise exchange.failure(exc) from None
    created = rfc3339_utc()
    parts: list[dict[str, Any]] = []
    for event in batch:
        parts += translator.feed(event, created)
    final = finish(exchange, events, translator, timing, facts, metrics)
    return whole_response(parts + final[:-1], final[-1], translator.target)


def first_token(timing: Timing, facts: RequestFacts, metrics: Metrics) -> None:
    # vLLM sends its first event once the prompt is processed and the first token out.
    timing.first = time.perf_counter_ns()
    facts.ttft = (timing.first - timing.start) / 1e9
    metrics.ttft.labels(facts.endpoint, facts.backend).observe(facts.ttft)


def finish(
    exchange: Exchange,
    events: SSEEvents,
    translator: StreamTranslator,
    timing: Timing,
    facts: RequestFacts,
    metrics: Metrics,
) -> list[dict[str, Any]]:
    """The answer's last chunks, once vLLM's body has ended: an error if it ended early."""
    if exchange.expired:
        raise exchange.failure()
    if not (events.done or translator.complete):
        raise UpstreamFailed(exchange.upstream.name, "the answer ended before it was complete")
    timing.end = time.perf_counter_ns()
    facts.finish_reason = translator.finish_reason
    usage = translator.usage
    if usage:
        prompt, completion = token_count(usage, "prompt_tokens"), token_count(usage, "completion_tokens")
        facts.count_tokens(prompt, completion)
        metrics.prompt_tokens.labels(facts.model_label, facts.backend, facts.tenant_label).inc(prompt)
        metrics.completion_tokens.labels(facts.model_label, facts.backend, facts.tenant_label).inc(completion)
    return translator.final(rfc3339_utc(), timing)


# ---- pass-through: the upstream's bytes, untouched ------------------------------------------------


async def relayed_bytes(exchange: Exchange) -> AsyncIterator[bytes]:
    try:
        async for chunk in exchange.response.aiter_raw():
            if chunk:
                yield chunk
    except STREAM_ERRORS as exc:
        raise exchange.failure(exc) from None
    if exchange.expired:
        raise exchange.failure()


async def whole_body(exchange: Exchange) -> bytes:
    """A non-streamed answer read whole (bounded by the total time limit), so a failure while
    reading it still becomes a proper error status."""
    try:
        body = await exchange.response.aread()
    except STREAM_ERRORS as exc:
        raise exchange.failure(exc) from None
    if exchange.expired:
        raise exchange.failure()
    return body
