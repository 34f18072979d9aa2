"""Upstream HTTP clients: one pooled httpx client per backend for the app's lifetime.

This module knows HTTP, timeouts and error normalisation; it knows nothing of Ollama's fields.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from adapter.errors import UpstreamHTTPError, UpstreamTimeout, UpstreamUnavailable
from adapter.limits import Limiter
from adapter.translate.responses import error_message_of

log = logging.getLogger("adapter.upstream")

# Failures where the request cannot have reached the server's application: safe to send again once.
# RemoteProtocolError covers a pooled keep-alive connection the server closed while idle (vLLM's
# keep-alive is 5 s).
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError)


class Upstream:
    """One backend (vLLM or Ollama Vision) behind a pooled client."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float | None = 30.0,
        max_connections: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.name = name
        self.limiter = limiter or Limiter(max_connections, 0, 0)
        self.base_url = safe_url(base_url)  # for messages: never echo credentials in a URL
        # identity: the SSE parser reads raw bytes, and compressing tokens on loopback only costs CPU.
        headers = {"Accept-Encoding": "identity"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.read_timeout = read_timeout or None
        self.client = httpx.AsyncClient(
            base_url=base_url,  # the real one, credentials included
            headers=headers,
            timeout=httpx.Timeout(connect=connect_timeout or None, read=self.read_timeout, write=60.0, pool=None),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=4.0,  # under vLLM's 5 s, so we drop idle connections before it does
            ),
            transport=transport,
            trust_env=False,  # only the configured upstream is ever contacted, whatever the environment says
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        read_timeout: float | bool | None = False,
        raise_for_status: bool = True,
    ) -> httpx.Response:
        """Send and return the response with its body unread (streamed).

        Raises UpstreamUnavailable (could not connect), UpstreamTimeout, or UpstreamHTTPError for
        status >= 400 (with the backend's own message), unless raise_for_status is False.
        """
        timeout = None
        if read_timeout is not False:
            timeout = httpx.Timeout(
                connect=self.client.timeout.connect, read=read_timeout or None, write=60.0, pool=None
            )
        request = self.client.build_request(
            method,
            path,
            content=body if body is not None else content,
            headers=headers,
            params=params,
            **({"timeout": timeout} if timeout is not None else {}),
        )
        # Only a body we hold in memory can be sent twice.
        attempts = 2 if content is None else 1
        for attempt in range(attempts):
            try:
                response = await self.client.send(request, stream=True)
                break
            except _RETRYABLE as exc:
                if attempt + 1 < attempts:
                    log.info("%s: %s before any byte was answered; retrying once", self.name, type(exc).__name__)
                    await asyncio.sleep(0.05)
                    continue
                raise UpstreamUnavailable(self.name, f"cannot connect to {self.base_url} ({_describe(exc)})") from None
            except httpx.ConnectTimeout:
                raise UpstreamUnavailable(self.name, f"connect to {self.base_url} timed out") from None
            except httpx.TimeoutException:
                raise UpstreamTimeout(self.name, "no response in time") from None
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(self.name, _describe(exc)) from None
        if raise_for_status and response.status_code >= 400:
            raise await self._error_from(response)
        return response

    async def _error_from(self, response: httpx.Response) -> UpstreamHTTPError:
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            raw = b""
        finally:
            await response.aclose()
        return UpstreamHTTPError(
            self.name, response.status_code, upstream_error_message(self.name, response.status_code, raw)
        )

    async def post_json(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        read_timeout: float | bool | None = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        return await self.send(
            "POST",
            path,
            body=orjson.dumps(payload),
            headers={"Content-Type": "application/json", **(headers or {})},
            read_timeout=read_timeout,
        )

    async def get_json(self, path: str, *, read_timeout: float = 5.0) -> Any:
        response = await self.send("GET", path, read_timeout=read_timeout)
        try:
            raw = await response.aread()
        finally:
            await response.aclose()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamHTTPError(
                self.name, 502, f"{self.name} answered {path} with something that is not JSON"
            ) from None

    async def read_json(self, response: httpx.Response) -> Any:
        """The whole body of a response from `send`, parsed."""
        try:
            raw = await response.aread()
        except httpx.TimeoutException:
            raise UpstreamTimeout(self.name, "response took too long") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(self.name, f"connection lost ({_describe(exc)})") from None
        finally:
            await response.aclose()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamHTTPError(self.name, 502, f"{self.name} answered with something that is not JSON") from None


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


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def iter_sse_json(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse an OpenAI-style SSE body into JSON objects, up to `data: [DONE]`.

    Works on bytes (no per-line decoding): only `data:` lines matter; comments, `event:` and blank
    lines are skipped.
    """
    buffer = b""
    async for raw in response.aiter_raw():
        buffer = buffer + raw if buffer else raw
        if b"\n" not in raw:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            if payload:
                try:
                    yield orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise ValueError(f"malformed event from upstream: {payload[:200]!r}") from None
    line = buffer.strip()
    if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
        yield orjson.loads(line[5:].strip())
