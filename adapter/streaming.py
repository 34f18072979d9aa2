"""NDJSON streaming to the client: one JSON object per line, flushed as produced.

Errors after the first byte become a last `{"error": ...}` line (status stays 200), as Ollama does.
A client that goes away cancels the producer at once, which closes the upstream request, so no
vLLM slot keeps generating for nobody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import orjson
from starlette.types import Receive, Scope, Send

from adapter.errors import OllamaError, error_body
from adapter.translate.responses import UpstreamStreamError

log = logging.getLogger("adapter.streaming")
T = TypeVar("T")

NDJSON = b"application/x-ndjson"


def ndjson_line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def mid_stream_error_message(exc: BaseException, backend: str) -> str:
    if isinstance(exc, OllamaError):
        return exc.message
    if isinstance(exc, UpstreamStreamError):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return f"{backend} timed out while streaming"
    if isinstance(exc, aiohttp.ClientError):
        return f"{backend} connection lost while streaming ({type(exc).__name__})"
    if isinstance(exc, ValueError):
        return f"{backend} sent a malformed stream: {exc}"
    return f"internal error while streaming: {type(exc).__name__}"


class StreamResponse:
    """An ASGI response that writes `chunks` as they come and watches for the client leaving.

    `chunks` yields bytes; an exception from it after the headers were sent becomes a final
    NDJSON error line. `on_close` runs exactly once, however the stream ends (finished, failed,
    client gone): that is where the upstream response is closed.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        media_type: bytes = NDJSON,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        backend: str = "upstream",
        error_lines: bool = True,
    ) -> None:
        self.chunks = chunks
        self.media_type = media_type
        self.status = status
        self.headers = headers or []
        self.on_close = on_close
        self.backend = backend
        self.error_lines = error_lines
        self.disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            _, self.disconnected = await until_disconnect(receive, self._write_all(send))
        except OSError:
            self.disconnected = True  # the socket went away under send()
        finally:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.debug("closing the chunk producer failed", exc_info=True)
            if self.on_close is not None:
                await self.on_close()

    async def _write_all(self, send: Send) -> None:
        headers = [(b"content-type", self.media_type), *self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:  # after the first byte: report in-band, keep status 200
            if not self.error_lines:
                raise
            message = mid_stream_error_message(exc, self.backend)
            log.warning("stream from %s ended with an error: %s", self.backend, message)
            await send({"type": "http.response.body", "body": error_body(message) + b"\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> tuple[T | None, bool]:
    """Run `work` in this task, cancelling it if the client disconnects first; (result, gone).

    One small watcher task per request: cancelling the work closes the upstream request, so no vLLM
    slot keeps generating for nobody (non-streaming requests included).
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work, False
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown): not ours to swallow
        task.uncancel()
        return None, True
    finally:
        watcher.cancel()
