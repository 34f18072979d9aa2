"""Upstream HTTP clients: one pooled aiohttp session per backend for the app's lifetime.

This module knows HTTP, timeouts and error normalisation; it knows nothing of Ollama's fields.

Why aiohttp and not httpx here: the per-chunk read is the gateway's hot path. Measured with bench/
(bench/README.md), httpx costs ~15 µs of client CPU per streamed chunk (an anyio cancel scope and an
h11 event per read) against ~6 µs for aiohttp, and httpcore's pool bookkeeping grows with the number
of open connections; at 256 streams the gateway on httpx delivered 0.41x the direct chunk rate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from adapter.errors import UpstreamHTTPError, UpstreamTimeout, UpstreamUnavailable
from adapter.limits import Limiter
from adapter.translate.responses import error_message_of

log = logging.getLogger("adapter.upstream")

# Failures where the request cannot have reached the server's application: safe to send again once.
# ServerDisconnectedError covers a pooled keep-alive connection the server closed while idle (vLLM's
# keep-alive is 5 s).
_RETRYABLE = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)

# What a broken or slow connection raises while a body is read.
STREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)

BACKEND_DEFAULT: Any = object()


class UpstreamResponse:
    """The parts of a response the routes use: status, headers, the body as it arrives, close."""

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

    async def drain(self, within: float) -> None:
        """Read what is left of a body we no longer need (the end of a chunked stream after
        [DONE]), so the connection can go back to the pool; give up after `within` seconds."""
        if self._raw.content.at_eof():
            return
        try:
            await asyncio.wait_for(self._raw.content.read(), within)
        except (*STREAM_ERRORS, ValueError):
            pass

    async def aclose(self) -> None:
        """A fully read body gives the connection back to the pool; otherwise the connection is
        closed, which is how vLLM learns that nobody wants the rest (it aborts the request)."""
        if self._raw.content.at_eof():
            self._raw.release()
        else:
            self._raw.close()


class Upstream:
    """One backend (vLLM or Ollama Vision) behind a pooled session. Create it inside the event loop."""

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
        # identity: the SSE parser reads raw bytes, and compressing tokens on loopback only costs CPU.
        headers = {"Accept-Encoding": "identity"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(
                limit=max_connections,
                limit_per_host=0,
                keepalive_timeout=4.0,  # under vLLM's 5 s, so we drop idle connections before it does
                ttl_dns_cache=300,
            ),
            auth=auth,
            auto_decompress=False,
            trust_env=False,  # only the configured upstream is ever contacted, whatever the environment says
            raise_for_status=False,
        )

    async def aclose(self) -> None:
        await self.session.close()

    def _timeout(self, read_timeout: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=self.connect_timeout, sock_read=read_timeout or None)

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

        `read_timeout` bounds each wait for data (the first byte included); unset: the backend's own.
        Raises UpstreamUnavailable (could not connect), UpstreamTimeout, or UpstreamHTTPError for
        status >= 400 (with the backend's own message), unless raise_for_status is False.
        """
        timeout = self._timeout(self.read_timeout if read_timeout is BACKEND_DEFAULT else read_timeout)
        url = self.url + path
        data = body if body is not None else content
        # Only a body we hold in memory can be sent twice.
        attempts = 2 if content is None else 1
        for attempt in range(attempts):
            try:
                raw = await self.session.request(method, url, data=data, headers=headers, timeout=timeout)
                break
            except _RETRYABLE as exc:
                if attempt + 1 < attempts:
                    log.info("%s: %s before any byte was answered; retrying once", self.name, type(exc).__name__)
                    await asyncio.sleep(0.05)
                    continue
                raise UpstreamUnavailable(self.name, f"cannot connect to {self.base_url} ({_describe(exc)})") from None
            except aiohttp.ConnectionTimeoutError:
                raise UpstreamUnavailable(self.name, f"connect to {self.base_url} timed out") from None
            except TimeoutError:
                raise UpstreamTimeout(self.name, "no response in time") from None
            except aiohttp.ClientError as exc:
                raise UpstreamUnavailable(self.name, _describe(exc)) from None
        response = UpstreamResponse(raw)
        if raise_for_status and response.status_code >= 400:
            raise await self._error_from(response)
        return response

    async def _error_from(self, response: UpstreamResponse) -> UpstreamHTTPError:
        try:
            raw = await response.aread()
        except STREAM_ERRORS:
            raw = b""
        finally:
            await response.aclose()
        status = response.status_code
        return UpstreamHTTPError(self.name, status, upstream_error_message(self.name, status, raw))

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
            raw = await response.aread()
        except TimeoutError:
            raise UpstreamTimeout(self.name, "response took too long") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.name, f"connection lost ({_describe(exc)})") from None
        finally:
            await response.aclose()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            where = f" {what}" if what else ""
            raise UpstreamHTTPError(
                self.name, 502, f"{self.name} answered{where} with something that is not JSON"
            ) from None


def upstream_error_message(name: str, status: int, raw: bytes) -> str:
    try:
        message = error_message_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        message = raw.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
    if status >= 500 or status in (401, 403):
        return f"{name} error ({status}): {message}"
    return message


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


async def iter_sse_batches(response: UpstreamResponse) -> AsyncIterator[list[dict[str, Any]]]:
    """Parse an OpenAI-style SSE body into JSON objects, one list per network read (the events
    that arrived together, so the caller can answer them with one write), up to `data: [DONE]`.

    Works on bytes (no per-line decoding): only `data:` lines matter; comments, `event:` and blank
    lines are skipped. After [DONE] the body is read to its end, so the connection can be reused.
    """
    buffer = b""
    done = False
    async for raw in response.aiter_raw():
        buffer = buffer + raw if buffer else raw
        if b"\n" not in raw:
            continue
        *lines, buffer = buffer.split(b"\n")
        events = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            if payload:
                try:
                    events.append(orjson.loads(payload))
                except orjson.JSONDecodeError:
                    raise ValueError(f"malformed event from upstream: {payload[:200]!r}") from None
        if events:
            yield events
        if done:
            await response.drain(0.1)
            return
    line = buffer.strip()
    if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
        try:
            yield [orjson.loads(line[5:].strip())]
        except orjson.JSONDecodeError:
            raise ValueError(f"malformed event from upstream: {line[:200]!r}") from None
