"""A fault-injecting stand-in upstream: a raw asyncio HTTP/1.1 server that can misbehave at the socket
level (FIN or RST at any point, stalls, trickles, garbage), which an ASGI app cannot.

It plays vLLM and Ollama Vision at once: background traffic (`GET /health`, `/v1/models`,
`/api/tags`, `/api/ps`, `/api/version`, `/`) is always answered normally, so the gateway's health
monitor and model discovery never see the fault; every other request is a "generation" request and
gets what `FaultyUpstream.fault` says. A legitimate answer (`ok`) is in the dialect of the path:
vLLM's SSE exactly as vLLM 0.32 sends it (role chunk, content chunks, finish chunk, usage chunk,
`data: [DONE]`) or its JSON; Anthropic's and the Responses API's events; Ollama's NDJSON or JSON.

Tests read what reached it: `received` (generation requests it read whole, with the connection they
came on and whether that connection had served a request before), `dropped` (requests it threw away
on a reused connection: the stale keep-alive case) and, per connection, when the peer closed it
(how a test sees that a client's disconnect reached the upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

FaultKind = Literal[
    "ok",
    "close_before_headers",  # read the whole request, then FIN
    "reset_before_headers",  # read the whole request, then RST
    "status",  # an error status with a body of `Fault.body` kind
    "garbage_200",  # 200 with bytes of no protocol at all
    "malformed_event",  # 200, the right content type, one event that does not parse
    "error_event",  # 200 SSE, then vLLM's own in-stream error event
    "no_data_lines",  # 200 SSE with only comments, then a clean end
    "truncated",  # some events, then a clean end: no finish_reason, no [DONE], no done:true
    "die_mid_body",  # some events, then RST
    "stall_before_headers",  # read the request, answer nothing until the peer leaves
    "stall_mid_stream",  # headers and some events, then nothing until the peer leaves
    "trickle",  # headers, then one event (or one byte) every `interval`, forever
    "slow_ok",  # a legitimate answer spread over `slow` seconds
    "stale_keepalive",  # a request arriving on a reused connection is dropped unanswered
    "close_after_answer",  # a whole answer announced as keep-alive, then the connection closed
]
ErrorBody = Literal["nested", "legacy", "ollama", "empty", "text", "huge"]

BACKGROUND_PATHS = ("/", "/health", "/v1/models", "/api/tags", "/api/ps", "/api/version")
VLLM_MODEL = "m"
VISION_MODEL = "v:latest"
TOKENS = ("Hello", " world", "!")
HUGE_ERROR_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Fault:
    kind: FaultKind = "ok"
    status: int = 500
    body: ErrorBody = "nested"
    retry_after: str | None = None
    events: int = 2  # pieces of the answer sent before it is cut, stalled or killed
    slow: float = 0.8  # slow_ok: seconds the whole answer takes
    interval: float = 0.15  # trickle: seconds between two pieces
    close: Literal["rst", "fin"] = "rst"  # stale_keepalive: how the reused connection is dropped
    # stale_keepalive: "one": the connection that answered the first request under the fault is
    # dropped when the next request arrives on it; "all": every connection that served a request is
    # (as when a NAT or load balancer forgot every idle connection at once).
    stale: Literal["one", "all"] = "one"
    # close_after_answer: seconds between the end of the answer and the FIN (what uvicorn does when
    # an app raised after its error answer went out: the answer said keep-alive, the socket closes)
    close_after: float = 0.002


@dataclass
class Connection:
    id: int
    served: int = 0  # requests answered on it
    doomed: bool = False  # stale_keepalive: the next generation request on it is dropped
    peer_closed_at: float | None = None  # monotonic time the peer closed or reset it
    gone: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Received:
    """A generation request the stand-in read whole (so the upstream "has" it)."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    request_id: str  # the client's X-Request-ID, as the gateway passes it on (without its suffix)
    connection: Connection
    reused: bool  # the connection had served a request before this one
    at: float
    sent: bytearray = field(default_factory=bytearray)  # the response body as written (de-chunked)

    @property
    def body(self) -> Any:
        try:
            return orjson.loads(self.raw)
        except orjson.JSONDecodeError:
            return None


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    """A legitimate answer: `pieces` written one by one; `content` of them carry no end marker."""

    content_type: str
    pieces: list[bytes]
    content: int
    stream: bool  # chunked and flushed per piece, or one body with Content-Length
    repeat: bytes  # what a trickle repeats forever after the first piece


class _PeerGone(Exception):
    pass


class FaultyUpstream:
    """Start/stop like ServerThread: `with FaultyUpstream() as up: up.url ...`."""

    def __init__(self) -> None:
        self.fault = Fault()
        # Per-request faults, by the client's X-Request-ID (the gateway passes it on with a suffix):
        # lets concurrent requests each meet their own fault.
        self.fault_for: dict[str, Fault] = {}
        self.keep_alive = True  # False: every answer says `Connection: close` and the socket is closed
        self.received: list[Received] = []
        self.dropped = 0
        self.connections: list[Connection] = []
        self._idle: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="faulty-upstream")
        self.port = 0
        self.url = ""

    # ---- test-facing -----------------------------------------------------------------------

    def reset(self, fault: Fault | None = None) -> None:
        self.fault = fault or Fault()
        self.fault_for.clear()
        self.keep_alive = True
        self.received.clear()
        self.dropped = 0
        for conn in self.connections:
            conn.doomed = False

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in list(self.received) if path is None or r.path == path)

    def idle_connections(self) -> int:
        """Connections waiting for their next request (in the gateway's pool, as far as it knows)."""
        return len(self._idle)

    def drop_idle_connections(self) -> None:
        """Close (FIN) every connection waiting for its next request, so the gateway's pool holds
        none: the next request goes out on a fresh connection."""

        def close_all() -> None:
            for writer in list(self._idle):
                writer.close()

        self._loop.call_soon_threadsafe(close_all)
        time.sleep(0.05)  # the gateway's loop sees the FINs and discards those connections

    def __enter__(self) -> FaultyUpstream:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- the connection loop ---------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(len(self.connections))
        self.connections.append(conn)
        buffer = bytearray()
        try:
            while True:
                self._idle.add(writer)
                try:
                    request = await self._read_request(reader, buffer)
                finally:
                    self._idle.discard(writer)
                if request is None:
                    self._peer_left(conn)
                    return
                keep = await self._answer_watched(conn, request, reader, writer, buffer)
                conn.served += 1
                if not keep or not self.keep_alive:
                    return
        except _PeerGone:
            self._peer_left(conn)
        except (ConnectionError, OSError):
            self._peer_left(conn)
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    @staticmethod
    def _peer_left(conn: Connection) -> None:
        if conn.peer_closed_at is None:
            conn.peer_closed_at = time.monotonic()
        conn.gone.set()

    async def _read_request(self, reader: asyncio.StreamReader, buffer: bytearray) -> _Request | None:
        while b"\r\n\r\n" not in buffer:
            data = await reader.read(65536)
            if not data:
                return None
            buffer += data
        end = buffer.index(b"\r\n\r\n")
        head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        del buffer[: end + 4]
        method, target, _ = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(reader, buffer)
        else:
            length = int(headers.get("content-length") or 0)
            while len(buffer) < length:
                data = await reader.read(65536)
                if not data:
                    return None
                buffer += data
            body = bytes(buffer[:length])
            del buffer[:length]
        return _Request(method, target.split("?", 1)[0], headers, body)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader, buffer: bytearray) -> bytes:
        body = bytearray()
        while True:
            while b"\r\n" not in buffer:
                data = await reader.read(65536)
                if not data:
                    raise _PeerGone
                buffer += data
            end = buffer.index(b"\r\n")
            size = int(bytes(buffer[:end]).split(b";")[0], 16)
            del buffer[: end + 2]
            while len(buffer) < size + 2:
                data = await reader.read(65536)
                if not data:
                    raise _PeerGone
                buffer += data
            body += buffer[:size]
            del buffer[: size + 2]
            if size == 0:
                return bytes(body)

    async def _answer_watched(
        self,
        conn: Connection,
        request: _Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buffer: bytearray,
    ) -> bool:
        """Answer while watching the socket: a peer that closes mid-answer is noticed at once
        (that is what the disconnect tests measure), even while the answer stalls."""

        async def watch() -> None:
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    buffer.extend(data)  # a pipelined next request: kept for the loop
            except (ConnectionError, OSError):
                pass
            self._peer_left(conn)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            return await self._answer(conn, request, writer)
        finally:
            # A cancelled read loses nothing (it had returned no data yet); it must be over before
            # the loop reads the next request from the same stream.
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # ---- answers ---------------------------------------------------------------------------

    async def _answer(self, conn: Connection, request: _Request, writer: asyncio.StreamWriter) -> bool:
        if request.method in ("GET", "HEAD") and request.path in BACKGROUND_PATHS:
            status, ctype, body = _background(request.path)
            await self._write_whole(writer, status, ctype, body)
            return True
        request_id = request.headers.get("x-request-id", "").rsplit("-", 1)[0]
        fault = self.fault_for.get(request_id, self.fault)
        if fault.kind == "stale_keepalive":
            if conn.doomed or (fault.stale == "all" and conn.served > 0):
                # An idle pooled connection the server had let go: the request finds it dead.
                self.dropped += 1
                await self._kill(writer, rst=fault.close == "rst")
                return False
            if fault.stale == "one" and not any(c.doomed for c in self.connections):
                conn.doomed = True  # answered normally now, dead when the next request comes
        record = Received(
            request.method,
            request.path,
            request.headers,
            request.body,
            request_id,
            conn,
            conn.served > 0,
            time.monotonic(),
        )
        self.received.append(record)
        kind = fault.kind
        if kind in ("ok", "stale_keepalive"):
            return await self._write_answer(writer, record, _ok_answer(request))
        if kind == "close_after_answer":
            await self._write_answer(writer, record, _ok_answer(request))
            await asyncio.sleep(fault.close_after)
            await self._kill(writer, rst=False)
            return False
        if kind == "close_before_headers":
            await self._kill(writer, rst=False)
            return False
        if kind == "reset_before_headers":
            await self._kill(writer, rst=True)
            return False
        if kind == "status":
            ctype, body = error_body(fault.body, fault.status, request.path)
            extra = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
            record.sent += body
            await self._write_whole(writer, fault.status, ctype, body, extra)
            return True
        if kind == "garbage_200":
            body = GARBAGE
            record.sent += body
            await self._write_whole(writer, 200, "text/html; charset=utf-8", body)
            return True
        if kind == "stall_before_headers":
            await self._until_gone(conn)
            return False
        answer = _ok_answer(request)
        if kind in ("malformed_event", "error_event"):
            if kind == "malformed_event":
                sse = answer.content_type.startswith("text/event-stream")
                bad = b"data: {not json}\n\n" if sse else b"{not json}\n"
            else:
                error = {"error": {"message": "engine failure", "type": "InternalServerError", "code": 500}}
                bad = b"data: " + orjson.dumps(error) + b"\n\n"
            # Good events and the bad one in one write, so they reach the gateway in one read (as
            # they do when the upstream fails right after a token): the good ones must still count.
            answer.pieces = [b"".join(answer.pieces[: fault.events]) + bad]
            answer.content = 1
            answer.stream = True
            return await self._write_answer(writer, record, answer)
        if kind == "no_data_lines":
            comments = Answer("text/event-stream; charset=utf-8", [b": ping\n\n"] * 3, 3, True, b"")
            return await self._write_answer(writer, record, comments)
        if kind == "slow_ok":
            return await self._write_answer(writer, record, answer, spread=fault.slow)
        partial = answer.pieces[: min(fault.events, answer.content)]
        if kind == "truncated":
            # A clean end at the HTTP level (the chunked body is terminated): only the protocol
            # inside says it is incomplete.
            await self._start_chunked(writer, 200, answer.content_type)
            for piece in partial:
                await self._write_chunk(writer, record, piece)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return False
        if kind == "die_mid_body":
            await self._start_chunked(writer, 200, answer.content_type)
            for piece in partial:
                await self._write_chunk(writer, record, piece)
            await asyncio.sleep(0.05)  # let the peer read what was sent before the RST discards it
            await self._kill(writer, rst=True)
            return False
        if kind == "stall_mid_stream":
            await self._start_chunked(writer, 200, answer.content_type)
            for piece in partial:
                await self._write_chunk(writer, record, piece)
            await self._until_gone(conn)
            return False
        if kind == "trickle":
            await self._start_chunked(writer, 200, answer.content_type)
            await self._write_chunk(writer, record, answer.pieces[0])
            while not conn.gone.is_set():
                await asyncio.sleep(fault.interval)
                await self._write_chunk(writer, record, answer.repeat)
            return False
        raise AssertionError(f"unknown fault {kind!r}")

    async def _until_gone(self, conn: Connection) -> None:
        await conn.gone.wait()

    async def _write_answer(
        self, writer: asyncio.StreamWriter, record: Received, answer: Answer, spread: float = 0.0
    ) -> bool:
        if not answer.stream:
            if spread:
                await asyncio.sleep(spread)
            body = b"".join(answer.pieces)
            record.sent += body
            await self._write_whole(writer, 200, answer.content_type, body)
            return True
        await self._start_chunked(writer, 200, answer.content_type)
        pause = spread / max(len(answer.pieces) - 1, 1)
        for i, piece in enumerate(answer.pieces):
            if spread and i:
                await asyncio.sleep(pause)
            await self._write_chunk(writer, record, piece)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def _connection_header(self) -> bytes:
        return b"keep-alive" if self.keep_alive else b"close"

    async def _write_whole(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}".encode(),
            b"content-type: " + content_type.encode(),
            b"content-length: " + str(len(body)).encode(),
            b"connection: " + self._connection_header(),
            *(f"{k}: {v}".encode("latin-1") for k, v in extra or ()),
        ]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        writer.write(body)
        await writer.drain()

    async def _start_chunked(self, writer: asyncio.StreamWriter, status: int, content_type: str) -> None:
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}".encode(),
            b"content-type: " + content_type.encode(),
            b"transfer-encoding: chunked",
            b"connection: " + self._connection_header(),
        ]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        await writer.drain()

    @staticmethod
    async def _write_chunk(writer: asyncio.StreamWriter, record: Received, piece: bytes) -> None:
        if writer.is_closing():
            raise _PeerGone
        record.sent += piece
        writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        await writer.drain()

    @staticmethod
    async def _kill(writer: asyncio.StreamWriter, *, rst: bool) -> None:
        """FIN: an orderly close. RST: SO_LINGER 0 then close, so the kernel resets the connection."""
        sock = writer.get_extra_info("socket")
        if rst and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

GARBAGE = b"<html><body><h1>It works!</h1></body></html>\n"


def error_message(status: int) -> str:
    """The message every JSON error body kind carries, so tests know what must be passed on."""
    return f"boom {status}"


def error_body(kind: ErrorBody, status: int, path: str = "") -> tuple[str, bytes]:
    message = error_message(status)
    if kind == "nested":  # vLLM >= 0.6 (and OpenAI)
        body = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}
        return "application/json", orjson.dumps(body)
    if kind == "legacy":  # older vLLM
        body = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status}
        return "application/json", orjson.dumps(body)
    if kind == "ollama":
        return "application/json; charset=utf-8", orjson.dumps({"error": message})
    if kind == "empty":
        return "application/json", b""
    if kind == "text":
        return "text/plain; charset=utf-8", f"plain text failure {status}\n".encode()
    # huge: far beyond what a gateway may read of an error body
    filler = "x" * HUGE_ERROR_BYTES
    return "application/json", orjson.dumps({"error": {"message": f"{message} {filler}", "code": status}})


def _background(path: str) -> tuple[int, str, bytes]:
    if path == "/health":
        return 200, "application/json", b""
    if path == "/":
        return 200, "text/plain; charset=utf-8", b"Ollama is running"
    if path == "/v1/models":
        card = {
            "id": VLLM_MODEL,
            "object": "model",
            "created": 1_700_000_000,
            "owned_by": "vllm",
            "root": VLLM_MODEL,
            "parent": None,
            "max_model_len": 2048,
            "permission": [],
        }
        return 200, "application/json", orjson.dumps({"object": "list", "data": [card]})
    if path in ("/api/tags", "/api/ps"):
        model = {
            "name": VISION_MODEL,
            "model": VISION_MODEL,
            "modified_at": "2026-11-20T10:00:00.123456789+01:00",
            "size": 4_000_000_000,
            "digest": "a" * 64,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llava",
                "families": ["llava"],
                "parameter_size": "7B",
                "quantization_level": "Q4_0",
            },
        }
        if path == "/api/ps":
            model |= {"expires_at": "2026-11-20T10:05:00+01:00", "size_vram": 5_000_000_000, "context_length": 4096}
        return 200, "application/json; charset=utf-8", orjson.dumps({"models": [model]})
    return 200, "application/json; charset=utf-8", b'{"version":"0.12.3"}'


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _named_event(kind: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\n" + _sse({"type": kind, **obj})


def _ok_answer(request: _Request) -> Answer:
    try:
        body = orjson.loads(request.body) if request.body else {}
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    path = request.path
    model = body.get("model")
    if path in ("/v1/chat/completions", "/v1/completions"):
        return _openai_answer(path == "/v1/chat/completions", body, model)
    if path == "/v1/messages":
        return _anthropic_answer(body, model)
    if path == "/v1/responses":
        return _responses_answer(body, model)
    if path in ("/api/chat", "/api/generate"):
        return _ollama_answer(path == "/api/chat", body, model)
    if path == "/api/embed":
        obj = {"model": model, "embeddings": [[0.6, 0.8, 0.0]], "total_duration": 1000, "prompt_eval_count": 1}
        return _json_answer(obj, "application/json; charset=utf-8")
    if path == "/v1/embeddings":
        data = [{"object": "embedding", "embedding": [0.6, 0.8], "index": 0}]
        obj = {"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        return _json_answer(obj, "application/json")
    return _json_answer({"status": "success"}, "application/json; charset=utf-8")


def _json_answer(obj: Any, content_type: str) -> Answer:
    raw = orjson.dumps(obj)
    half = len(raw) // 2
    # Two pieces so a fault can cut the body in the middle; a trickle repeats a string's byte.
    return Answer(content_type, [raw[:half], raw[half:]], 1, False, b"a")


def _openai_answer(chat: bool, body: dict[str, Any], model: Any) -> Answer:
    cid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return _sse({"id": cid, "object": obj, "created": 1_700_000_000, "model": model, "choices": choices, **extra})

    def piece(text: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish, "stop_reason": None}

    if not body.get("stream"):
        text = "".join(TOKENS)
        usage = {"prompt_tokens": 5, "total_tokens": 5 + len(TOKENS), "completion_tokens": len(TOKENS)}
        if chat:
            message = {"role": "assistant", "content": text, "refusal": None, "reasoning": None, "tool_calls": []}
            choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        whole = {
            "id": cid,
            "object": "chat.completion" if chat else "text_completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
        return _json_answer(whole, "application/json")
    pieces = [event([piece("", role=True)])] if chat else []
    pieces += [event([piece(token)]) for token in TOKENS]
    content = len(pieces)
    pieces.append(event([piece(None if chat else "", "stop")]))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 5, "total_tokens": 5 + len(TOKENS), "completion_tokens": len(TOKENS)}
        pieces.append(event([], usage=usage))
    pieces.append(b"data: [DONE]\n\n")
    return Answer("text/event-stream; charset=utf-8", pieces, content, True, event([piece("x")]))


def _anthropic_answer(body: dict[str, Any], model: Any) -> Answer:
    usage = {"input_tokens": 5, "output_tokens": len(TOKENS)}
    message = {
        "id": f"msg_{uuid.uuid4().hex[:16]}",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "".join(TOKENS)}],
        "model": model,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        return _json_answer(message, "application/json")

    def delta(text: str) -> bytes:
        return _named_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})

    pieces = [
        _named_event("message_start", {"message": {**message, "content": [], "stop_reason": None}}),
        _named_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *(delta(token) for token in TOKENS),
    ]
    content = len(pieces)
    pieces += [
        _named_event("content_block_stop", {"index": 0}),
        _named_event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": usage}),
        _named_event("message_stop", {}),
    ]
    return Answer("text/event-stream; charset=utf-8", pieces, content, True, delta("x"))


def _responses_answer(body: dict[str, Any], model: Any) -> Answer:
    text = "".join(TOKENS)
    response = {
        "id": f"resp_{uuid.uuid4().hex[:16]}",
        "object": "response",
        "model": model,
        "status": "completed",
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
    }
    if not body.get("stream"):
        return _json_answer(response, "application/json")

    def delta(token: str) -> bytes:
        return _named_event("response.output_text.delta", {"output_index": 0, "content_index": 0, "delta": token})

    pieces = [_named_event("response.created", {"response": {**response, "status": "in_progress", "output": []}})]
    pieces += [delta(token) for token in TOKENS]
    content = len(pieces)
    pieces.append(_named_event("response.completed", {"response": response}))
    return Answer("text/event-stream; charset=utf-8", pieces, content, True, delta("x"))


def _ollama_answer(chat: bool, body: dict[str, Any], model: Any) -> Answer:
    def chunk(text: str, done: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "created_at": "2026-11-23T10:00:00.5Z"}
        if chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = done
        if done:
            out |= {
                "done_reason": "stop",
                "total_duration": 1000,
                "load_duration": 10,
                "prompt_eval_count": 5,
                "prompt_eval_duration": 100,
                "eval_count": len(TOKENS),
                "eval_duration": 800,
            }
        return out

    if body.get("stream") is False:
        return _json_answer(chunk("".join(TOKENS), True), "application/json; charset=utf-8")
    pieces = [orjson.dumps(chunk(token, False)) + b"\n" for token in TOKENS]
    content = len(pieces)
    pieces.append(orjson.dumps(chunk("", True)) + b"\n")
    return Answer("application/x-ndjson", pieces, content, True, orjson.dumps(chunk("x", False)) + b"\n")


def iter_sse_data(raw: bytes) -> Iterator[bytes]:
    """The `data:` payloads of an SSE body, in order (a test helper)."""
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            yield line[5:].strip()
