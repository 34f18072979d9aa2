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
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


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


class DirectBody:
    """Writes body chunks straight onto the connection of uvicorn's httptools server, framed as
    its own `send` frames them (HTTP/1.1 chunked), from inside a callback: no coroutine per chunk.

    Only for a response whose start went out with chunked encoding; the end of the body still goes
    through `send`, so uvicorn finishes the response (keep-alive, its state) itself. When the
    client reads slower than we write, `on_paused` is called: the writer stops reading upstream
    and waits for `drain`.
    """

    __slots__ = ("_cycle", "_flow", "_transport", "on_paused")

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self._transport: asyncio.WriteTransport = cycle.transport
        self._flow = cycle.flow
        self.on_paused: Callable[[], None] | None = None  # called after a write that filled the client's buffer

    @classmethod
    def of(cls, server_send: Send) -> DirectBody | None:
        """The direct writer behind the server's `send`, if the server is one we know how to write for."""
        cycle = getattr(server_send, "__self__", None)
        if type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
            return None
        if getattr(cycle, "chunked_encoding", None) is not True or getattr(cycle, "response_complete", True):
            return None
        return cls(cycle)

    def write(self, data: bytes) -> None:
        # A client gone (or going: closed before uvicorn heard of it) is not written to; the
        # disconnect watcher ends the stream.
        if not self._cycle.disconnected and not self._transport.is_closing():
            self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))
            if self._flow.write_paused and self.on_paused is not None:
                self.on_paused()

    async def drain(self) -> None:
        await self._flow.drain()


# A producer that pushes a whole body through a DirectBody, returning when it is written.
Pusher = Callable[[DirectBody], Awaitable[None]]


class StreamResponse:
    """An ASGI response that writes `chunks` as they come and watches for the client leaving.

    `chunks` yields bytes. With `push`, on a server DirectBody can write to, the body is pushed
    instead, chunk by chunk from inside the upstream's read callback, and `chunks` is never started.
    An exception from either after the headers were sent becomes `error_line` (when the body format
    has one), else the body just ends. `on_close` runs exactly once, however
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
        push: Pusher | None = None,
    ) -> None:
        self.chunks = chunks
        self.push = push
        self.media_type = media_type
        self.status = status
        self.headers = headers or []
        self.on_close = on_close
        self.error_line = error_line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(scope, receive, self._write_all(send, scope.get(SERVER_SEND, send)))
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
        direct = DirectBody.of(body_send) if self.push is not None else None
        try:
            if direct is not None and self.push is not None:
                await self.push(direct)
            else:
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


WATCH_KEY = "adapter.disconnect_watch"


class DisconnectWatch:
    """One request's watch for its client leaving: one task for the whole request, however many
    steps of it are guarded (opening the upstream call, then streaming the answer). The task ends
    by itself once the response is complete (the server then answers receive() with a disconnect)."""

    __slots__ = ("_guarded", "_receive", "_task", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._guarded: asyncio.Task[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.gone = False

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._guarded is not None:
            self._guarded.cancel()

    async def guard(self, work: Awaitable[T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        if self.gone:  # left between two guarded steps
            getattr(work, "close", lambda: None)()
            raise ClientGone()
        self._guarded = task
        if self._task is None:
            self._task = task.get_loop().create_task(self._watch())
        try:
            return await work
        except asyncio.CancelledError:
            if not self.gone:
                raise  # cancelled from outside (shutdown): not ours to swallow
            task.uncancel()
            raise ClientGone() from None
        finally:
            self._guarded = None

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def until_disconnect(scope: Scope, receive: Receive, work: Awaitable[T]) -> T:
    """Run `work` in this task, cancelling it if the client disconnects first (then ClientGone):
    cancelling the work closes the upstream request, so no vLLM slot keeps generating for nobody
    (non-streaming requests included). The watch is the request's one (DisconnectWatch)."""
    state = scope.setdefault("state", {})
    watch = state.get(WATCH_KEY)
    if watch is None:
        watch = state[WATCH_KEY] = DisconnectWatch(receive)
    return await watch.guard(work)
