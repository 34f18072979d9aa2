"""Upstream HTTP clients: one pooled aiohttp session per upstream server (a vLLM replica, Ollama
Vision) for the app's lifetime.

This module knows HTTP, timeouts, retries and error normalisation; it knows nothing of Ollama's
fields.

Why aiohttp and not httpx here: the per-chunk read is the gateway's hot path. Measured with bench/
(bench/README.md), httpx costs ~15 µs of client CPU per streamed chunk (an anyio cancel scope and an
h11 event per read) against ~6 µs for aiohttp, and httpcore's pool bookkeeping grows with the number
of open connections; at 256 streams the gateway on httpx delivered 0.41x the direct chunk rate.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from adapter.errors import UpstreamFailed, UpstreamHTTPError, UpstreamTimeout, UpstreamUnavailable
from adapter.limits import Limiter
from adapter.translate.responses import error_message_of

log = logging.getLogger("adapter.upstream")

# What a broken or slow connection raises while a body is read.
STREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)

# An error body is read up to this size: enough for any message, bounded against a hostile upstream.
MAX_ERROR_BODY = 64 * 1024

BACKEND_DEFAULT: Any = object()


def _closed_under_us(exc: BaseException) -> bool:
    """The server closed or reset the connection before answering (FIN or RST)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)


def _not_written(exc: BaseException) -> bool:
    """The request could not be written whole: the server cannot have started on it."""
    return isinstance(exc, aiohttp.ClientOSError) and (exc.strerror or "").startswith("Can not write request body")


async def _mark_reused(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
    ctx.trace_request_ctx.reused = True


class UpstreamResponse:
    """The parts of a response the gateway uses: status, headers, the body as it arrives, close."""

    __slots__ = ("_raw", "headers", "status_code")

    def __init__(self, raw: aiohttp.ClientResponse) -> None:
        self._raw = raw
        self.status_code: int = raw.status
        self.headers: CIMultiDictProxy[str] = raw.headers

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive off the socket (no decoding: we ask for identity)."""
        return self._raw.content.iter_any()

    async def aread(self) -> bytes:
        return await self._raw.read()

    async def read_any(self) -> bytes:
        """The next bytes to arrive (b"" at the end)."""
        return await self._raw.content.readany()

    async def read_at_most(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body; the rest is never read (the connection is then closed)."""
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = await self._raw.content.read(limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def drain(self, within: float) -> None:
        """Read what is left of a body we no longer need (the end of a chunked stream after
        [DONE]), so the connection can go back to the pool; give up after `within` seconds."""
        if self._raw.content.at_eof():
            return
        try:
            await asyncio.wait_for(self._raw.content.read(), within)
        except (*STREAM_ERRORS, ValueError):
            pass

    async def push_body(self, on_body: Callable[[bytes], None], idle_timeout: float | None) -> None:
        """Hand every piece of the body to `on_body` the moment it is parsed, inside the socket's
        own read callback, and return once the body has ended.

        The per-chunk path of a stream then costs no task wake-up, no future and no await: aiohttp
        still owns the connection (pool, parser, chunked decoding, release), and the body's reader
        hands what the parser decoded straight over (_PushedReader). An exception from `on_body` ends
        the body with that exception, as does a lost connection, or `idle_timeout` seconds without
        data (TimeoutError).
        """
        content = self._raw.content
        pending = content.read_nowait()  # what came with the headers
        if pending:
            on_body(pending)
        if content.is_eof():
            return
        connection = self._raw.connection
        if connection is not None and connection.protocol is not None:
            # _BodyPush watches instead; aiohttp's timer, if armed, is dropped at the next read.
            connection.protocol.read_timeout = None
        push = _PUSHED[id(content)] = _BodyPush(content, on_body, idle_timeout)
        content.__class__ = _PushedReader
        try:
            await content.wait_eof()
        finally:
            content.__class__ = aiohttp.StreamReader
            del _PUSHED[id(content)]
            push.stop_watching()
        rest = content.read_nowait()  # raises the reason the body ended early, if it did
        if rest:
            on_body(rest)

    def pause_reading(self) -> None:
        connection = self._raw.connection
        if connection is not None and connection.transport is not None:
            connection.transport.pause_reading()

    def resume_reading(self) -> None:
        connection = self._raw.connection
        if connection is not None and connection.transport is not None:
            connection.transport.resume_reading()

    def close(self) -> None:
        """A fully read body gives the connection back to the pool; otherwise the connection is
        closed, which is how vLLM learns that nobody wants the rest (it aborts the request)."""
        if self._raw.content.at_eof():
            self._raw.release()
        else:
            self._raw.close()


class _PushedReader(aiohttp.StreamReader):
    """A body's aiohttp buffer while the body is pushed (the class is swapped in for the body's
    length, then back): what aiohttp's parser decoded goes straight to the consumer instead of into
    the buffer. aiohttp still owns the connection, the parser, chunked decoding, the end of the body
    and the release to the pool; a read just skips the buffer, the waiter and read_nowait."""

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        push = _PUSHED[id(self)]
        push.last = push.clock()
        if data and not push.failed:  # after a failure the body has ended; the parser has not stopped
            try:
                push.on_body(data)
            except Exception as exc:  # the consumer refused it: the body ends with its reason
                push.failed = True
                self.set_exception(exc)
        return False  # nothing held back: the parser may go on

    # Chunk boundaries are kept only for iter_chunks(), which a pushed body never serves.
    def begin_http_chunk_receiving(self) -> None:
        pass

    def end_http_chunk_receiving(self) -> None:
        pass


class _BodyPush:
    """One pushed body: its consumer, and the wait for data, bounded here rather than by aiohttp's
    read timeout, which re-arms a timer on every read: one timer per body, which on firing looks at
    when data last came (`last`, set by _PushedReader on every read)."""

    __slots__ = ("_idle", "_timer", "clock", "content", "failed", "last", "on_body")

    def __init__(
        self, content: aiohttp.StreamReader, on_body: Callable[[bytes], None], idle_timeout: float | None
    ) -> None:
        self.content = content
        self.on_body = on_body
        self.failed = False
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.last = self.clock()
        self._idle = idle_timeout
        self._timer: asyncio.TimerHandle | None = None
        if idle_timeout:
            self._timer = loop.call_at(self.last + idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        assert self._idle is not None
        due = self.last + self._idle
        if self.clock() < due:
            self._timer = asyncio.get_running_loop().call_at(due, self._check_idle)
            return
        self._timer = None
        if not self.content.is_eof() and self.content.exception() is None:
            self.failed = True
            self.content.set_exception(TimeoutError(f"no data for {self._idle:g} s"))

    def stop_watching(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# The bodies being pushed, by id() of their reader: a slotted reader has no room for its consumer.
_PUSHED: dict[int, _BodyPush] = {}


class Upstream:
    """One upstream server behind a pooled session. Create it inside the event loop."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float | None = 30.0,
        max_connections: int = 512,
        limiter: Limiter | None = None,
    ) -> None:
        self.name = name
        parts = urlsplit(base_url.rstrip("/"))
        # Credentials in the URL become Basic auth (a bearer key, when given, wins); the URL kept for
        # requests and messages has none, so they are never echoed.
        auth = aiohttp.BasicAuth(parts.username or "", parts.password or "") if parts.username and not api_key else None
        self.url = self.base_url = safe_url(base_url.rstrip("/"))
        self.limiter = limiter or Limiter(max_connections, 0, 0)
        self.connect_timeout = connect_timeout or None
        self.read_timeout = read_timeout or None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}
        # identity: the SSE parser reads raw bytes, and compressing tokens on loopback only costs CPU.
        headers = {"Accept-Encoding": "identity"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # Tells a stale pooled connection (safe to retry) from a fresh one (the server got the request).
        reuse = aiohttp.TraceConfig(trace_config_ctx_factory=SimpleNamespace)
        reuse.on_connection_reuseconn.append(_mark_reused)

        def session(connector: aiohttp.TCPConnector, traces: list[aiohttp.TraceConfig]) -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                headers=headers,
                connector=connector,
                auth=auth,
                auto_decompress=False,
                trust_env=False,  # only the configured upstream is contacted, whatever the environment says
                raise_for_status=False,
                trace_configs=traces,
            )

        self.session = session(
            aiohttp.TCPConnector(
                limit=max_connections,
                limit_per_host=0,
                keepalive_timeout=4.0,  # under vLLM's 5 s, so we drop idle connections before it does
                ttl_dns_cache=300,
            ),
            [reuse],
        )
        # The retry after a dead pooled connection goes out on a connection of its own: never a
        # second pooled one, which may be just as dead (every pooled connection dies with a restart).
        self._fresh = session(aiohttp.TCPConnector(limit=0, force_close=True, ttl_dns_cache=300), [])

    async def aclose(self) -> None:
        await self.session.close()
        await self._fresh.close()

    def _timeout(self, read_timeout: float | None) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(read_timeout)
        if timeout is None:  # a handful of distinct values: made once each, not per request
            timeout = self._timeouts[read_timeout] = aiohttp.ClientTimeout(
                total=None, connect=self.connect_timeout, sock_read=read_timeout or None
            )
        return timeout

    async def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
        read_timeout: float | None = BACKEND_DEFAULT,
        raise_for_status: bool = True,
    ) -> UpstreamResponse:
        """Send and return the response with its body unread (streamed).

        `read_timeout` bounds each wait for data (the first byte included); unset: the upstream's own.
        A pooled connection that turns out to be closed or reset (the server dropped it while idle)
        is retried once on a fresh one; a fresh connection that fails after the request was written
        is not, because the server may be working on it.

        Raises UpstreamUnavailable (could not connect: nothing was sent), UpstreamFailed (closed
        without an answer), UpstreamTimeout, or UpstreamHTTPError for status >= 400 (with the
        upstream's own message), unless raise_for_status is False.
        """
        timeout = self._timeout(self.read_timeout if read_timeout is BACKEND_DEFAULT else read_timeout)
        url = self.url + path
        data = body if body is not None else content
        # Only a body we hold in memory can be sent twice.
        attempts = 2 if content is None else 1
        for attempt in range(attempts):
            trace = SimpleNamespace(reused=False)
            try:
                if attempt == 0:
                    raw = await self.session.request(
                        method, url, data=data, headers=headers, timeout=timeout, trace_request_ctx=trace
                    )
                else:
                    raw = await self._fresh.request(method, url, data=data, headers=headers, timeout=timeout)
                break
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamUnavailable(self.name, f"cannot connect to {self.base_url} ({_describe(exc)})") from None
            except aiohttp.ConnectionTimeoutError:
                raise UpstreamUnavailable(self.name, f"connect to {self.base_url} timed out") from None
            except TimeoutError:
                raise UpstreamTimeout(self.name, "no response in time") from None
            except aiohttp.ClientError as exc:
                # Sent again, once, on a connection of its own: a request that could not be written
                # whole, or one whose pooled connection turned out closed (the server let it go
                # idle). A fresh connection that fails after the request was written is not retried:
                # the server may be generating.
                if attempt + 1 < attempts and (_not_written(exc) or (trace.reused and _closed_under_us(exc))):
                    log.info("%s: %s on a pooled connection; sending again on a fresh one", self.name, _describe(exc))
                    continue
                raise UpstreamFailed(self.name, f"connection lost before any answer ({_describe(exc)})") from None
        response = UpstreamResponse(raw)
        if raise_for_status and response.status_code >= 400:
            raise await self.error_from(response)
        return response

    async def error_from(self, response: UpstreamResponse) -> UpstreamHTTPError:
        """The error an upstream's error status stands for, with its message (read bounded)."""
        try:
            raw = await response.read_at_most(MAX_ERROR_BODY)
        except STREAM_ERRORS:
            raw = b""
        finally:
            response.close()
        status = response.status_code
        return UpstreamHTTPError(
            self.name, status, upstream_error_message(status, raw), retry_after=response.headers.get("Retry-After")
        )

    async def post_json(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        read_timeout: float | None = BACKEND_DEFAULT,
        headers: dict[str, str] | None = None,
    ) -> UpstreamResponse:
        return await self.send(
            "POST",
            path,
            body=orjson.dumps(payload),
            headers={"Content-Type": "application/json", **(headers or {})},
            read_timeout=read_timeout,
        )

    async def get_json(self, path: str, *, read_timeout: float = 5.0) -> Any:
        return await self.read_json(await self.send("GET", path, read_timeout=read_timeout), path)

    async def read_json(self, response: UpstreamResponse, what: str = "") -> Any:
        """The whole body of a response from `send`, parsed."""
        try:
            raw = await self.read_body(response)
        finally:
            response.close()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            where = f" {what}" if what else ""
            raise UpstreamFailed(self.name, f"it answered{where} with something that is not JSON") from None

    async def read_body(self, response: UpstreamResponse) -> bytes:
        try:
            return await response.aread()
        except TimeoutError:
            raise UpstreamTimeout(self.name, "response took too long") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(self.name, f"connection lost ({_describe(exc)})") from None


def upstream_error_message(status: int, raw: bytes) -> str:
    try:
        message = error_message_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        message = raw.decode("utf-8", "replace").strip()
    return message or f"HTTP {status}"


def safe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Its str() names the host and port (and so any credentials in them): say only why.
        reason = exc.os_error.strerror if exc.os_error is not None and exc.os_error.strerror else ""
        return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SSEEvents:
    """An OpenAI-style SSE body as JSON objects, up to `data: [DONE]`, parsed as its bytes arrive.

    `feed` takes the body's bytes as they come off the socket and returns the events completed by
    them (the events that arrived together, so the caller can answer them with one write). It works
    on bytes (no per-line decoding): only `data:` lines matter; comments, `event:` and blank lines
    are skipped. `done` tells whether [DONE] came: a body that just stops was cut off.
    """

    __slots__ = ("_buffer", "backend", "done", "response")

    def __init__(self, response: UpstreamResponse, backend: str) -> None:
        self.response = response
        self.backend = backend
        self.done = False
        self._buffer = b""

    def feed(self, raw: bytes) -> list[dict[str, Any]]:
        """The events these bytes complete. A malformed event raises, carrying the events before it
        (they still reach the client)."""
        if self.done:  # what follows [DONE] is the body's end, not events
            return []
        if self._buffer:
            raw = self._buffer + raw
        *lines, self._buffer = raw.split(b"\n")
        events: list[dict[str, Any]] = []
        for line in lines:
            if line[:5] != b"data:":
                continue
            # Parsed first, looked at only if it is not JSON: [DONE] comes once, events every token.
            try:
                events.append(orjson.loads(line[5:]))
            except orjson.JSONDecodeError:
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                    break
                if payload:
                    raise MalformedEvent(self.backend, payload, events) from None
        return events

    def end(self) -> list[dict[str, Any]]:
        """The events of a last line that had no newline, once the body has ended."""
        return self.feed(b"\n") if self._buffer.strip() else []

    async def whole(self, on_first: Callable[[], None]) -> list[dict[str, Any]]:
        """Every event of a body read to its end: for an answer wanted whole, the body is taken in
        two reads (the first, timed by `on_first`; then the rest), not one wake-up per event."""
        first = await self.response.read_any()
        if first:
            on_first()
        rest = await self.response.aread() if first else b""
        events = self.feed(first + rest)
        return events + self.end()


class MalformedEvent(UpstreamFailed):
    """An SSE event that is not JSON. `events` are the good ones that came before it."""

    def __init__(self, backend: str, payload: bytes, events: list[dict[str, Any]]) -> None:
        super().__init__(backend, f"malformed stream event {payload[:200]!r}")
        self.events = events
