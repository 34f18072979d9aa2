"""Streaming to the client: chunks written as produced, errors after the first byte as a last line,
and a client that goes away cancelling the producer at once.

Errors after the first byte cannot change the status (it is sent): Ollama ends an NDJSON stream with
a last `{"error": ...}` line, OpenAI-style SSE with a `data: {"error": ...}` event. Cancelling the
producer closes the upstream request, so no vLLM slot keeps generating for nobody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.types import Receive, Scope, Send

from adapter.errors import ClientGone, Dialect, OllamaError, error_body_for

log = logging.getLogger("adapter.streaming")
T = TypeVar("T")

NDJSON = b"application/x-ndjson"
# Where the app keeps the ASGI server's own `send` in the scope (see adapter.app.GatewayApp).
SERVER_SEND = "adapter.server_send"
SSE = b"text/event-stream; charset=utf-8"

ErrorLine = Callable[[str], bytes]


def ndjson_line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def ndjson_error_line(message: str) -> bytes:
    return error_body_for("ollama", 0, message) + b"\n"


def sse_error_event(dialect: Dialect) -> ErrorLine:
    """The SSE event that reports a failure inside a stream (as vLLM itself sends one)."""

    def event(message: str) -> bytes:
        return b"data: " + error_body_for(dialect, 500, message) + b"\n\n"

    return event


def mid_stream_error_message(exc: BaseException) -> str:
    if isinstance(exc, OllamaError):
        return exc.message
    return f"internal error while streaming: {type(exc).__name__}"


class StreamResponse:
    """An ASGI response that writes `chunks` as they come and watches for the client leaving.

    `chunks` yields bytes; an exception from it after the headers were sent becomes `error_line`
    (when the body format has one), else the body just ends. `on_close` runs exactly once, however
    the stream ends (finished, failed, client gone): that is where the upstream response is closed.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        media_type: bytes = NDJSON,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
        on_close: Callable[[], None] | None = None,
        error_line: ErrorLine | None = ndjson_error_line,
    ) -> None:
        self.chunks = chunks
        self.media_type = media_type
        self.status = status
        self.headers = headers or []
        self.on_close = on_close
        self.error_line = error_line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self._write_all(send, scope.get(SERVER_SEND, send)))
        except (ClientGone, OSError):
            pass  # the client left (or its socket went away under send()): nobody to tell
        finally:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.debug("closing the chunk producer failed", exc_info=True)
            if self.on_close is not None:
                self.on_close()

    async def _write_all(self, send: Send, body_send: Send) -> None:
        """The start goes through every middleware (status, headers, access log); the body chunks
        straight to the server's own `send`, since no middleware looks at them: per chunk, that is
        four coroutine calls fewer on the hot path."""
        headers = [(b"content-type", self.media_type), *self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        try:
            async for chunk in self.chunks:
                await body_send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:  # after the first byte: report in-band, keep the status
            message = mid_stream_error_message(exc)
            if isinstance(exc, OllamaError):
                log.warning("stream ended with an error: %s", message)
            else:
                log.error("stream failed: %s", message, exc_info=exc)
            if self.error_line is not None:
                await send({"type": "http.response.body", "body": self.error_line(message), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run `work` in this task, cancelling it if the client disconnects first (then ClientGone).

    One small watcher task per call: cancelling the work closes the upstream request, so no vLLM
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
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown): not ours to swallow
        task.uncancel()
        raise ClientGone() from None
    finally:
        watcher.cancel()
