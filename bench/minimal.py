"""A minimal Python translator (Ollama /api/chat -> OpenAI SSE), the floor for a Python gateway.

`python -m bench.minimal --port P --upstream http://127.0.0.1:Q [--client httpx|httpx2|aiohttp|raw]`

Raw ASGI on uvicorn (uvloop + httptools), one pooled upstream client, bytes-level SSE parsing,
orjson both ways, no validation, routing, metrics or logging. The bench puts it in the table beside
the gateway: the difference between the two rows is what the gateway's features and structure cost.

`--client` picks the upstream HTTP client, to measure what the client library costs on the hot path:
`httpx`, `httpx2` (the pydantic fork, with the connection-pool fixes; it is what the `openai` SDK now
depends on, and is not a dependency of this project: install it to compare), `aiohttp` (what the
gateway uses, and the bench's `minimal-aiohttp` row), or `raw` (an asyncio protocol with the httptools
parser, a pool of idle connections in a list: the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx
import orjson

NDJSON = [(b"content-type", b"application/x-ndjson")]
JSON = [(b"content-type", b"application/json; charset=utf-8")]


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class HttpxClient:
    def __init__(self, upstream: str, module: Any = httpx) -> None:
        self.client = module.AsyncClient(
            base_url=upstream,
            timeout=module.Timeout(30.0, pool=None),
            limits=module.Limits(max_connections=1024, max_keepalive_connections=1024),
            headers={"Accept-Encoding": "identity"},
        )

    async def post(self, body: bytes) -> Any:
        request = self.client.build_request(
            "POST", "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
        response = await self.client.send(request, stream=True)
        return response.status_code, response.aiter_raw(), response.aread, response.aclose

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpClient:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.session: Any = None

    async def post(self, body: bytes) -> Any:
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1024, limit_per_host=1024, keepalive_timeout=4.0),
                timeout=aiohttp.ClientTimeout(sock_read=30.0),
                auto_decompress=False,
            )
        response = await self.session.post(
            self.upstream + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )

        async def close() -> None:
            response.release()

        return response.status, response.content.iter_any(), response.read, close

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()


class RawConn(asyncio.Protocol):
    """One keep-alive connection; the body arrives in a deque the consumer drains."""

    def __init__(self, pool: RawClient) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.chunks: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.headers_done: asyncio.Future[int] | None = None
        self.complete = False
        self.broken = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        if not self.complete:
            self._fail(exc or ConnectionResetError("upstream closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        self.broken = True
        for fut in (self.headers_done, self.waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def on_headers_complete(self) -> None:
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    async def body(self) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            while self.chunks:
                yield self.chunks.popleft()
            if self.complete:
                return
            self.waiter = loop.create_future()
            await self.waiter


class RawClient:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: list[RawConn] = []
        self.head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nAccept-Encoding: identity\r\nContent-Length: "
        ).encode()

    async def post(self, body: bytes) -> Any:
        loop = asyncio.get_running_loop()
        while self.idle:
            conn = self.idle.pop()
            if not conn.broken:
                break
        else:
            _, conn = await loop.create_connection(lambda: RawConn(self), self.host, self.port)
        conn.chunks.clear()
        conn.complete = False
        conn.headers_done = loop.create_future()
        conn.transport.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status = await conn.headers_done

        async def read() -> bytes:
            return b"".join([c async for c in conn.body()])

        async def close() -> None:
            if conn.complete and not conn.broken and conn.parser.should_keep_alive():
                self.idle.append(conn)
            else:
                conn.broken = True
                conn.transport.close()

        return status, conn.body(), read, close

    async def aclose(self) -> None:
        for conn in self.idle:
            conn.transport.close()


def make_client(kind: str, upstream: str) -> Any:
    if kind == "httpx":
        return HttpxClient(upstream)
    if kind == "httpx2":
        import httpx2

        return HttpxClient(upstream, httpx2)
    if kind == "aiohttp":
        return AiohttpClient(upstream)
    if kind == "raw":
        return RawClient(upstream)
    raise SystemExit(f"unknown client {kind!r}")


class Minimal:
    def __init__(self, upstream: str, client: str = "httpx") -> None:
        self.client = make_client(client, upstream)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] != "/api/chat":
            await send({"type": "http.response.start", "status": 200 if scope["path"] == "/" else 404, "headers": []})
            await send({"type": "http.response.body", "body": b"Ollama is running"})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = orjson.loads(raw)
        model = body["model"]
        stream = body.get("stream") is not False
        payload = {"model": model, "messages": body["messages"], "stream": stream}
        if stream:
            payload["stream_options"] = {"include_usage": True}
        start = time.perf_counter_ns()
        _status, body_chunks, read, close = await self.client.post(orjson.dumps(payload))
        try:
            if not stream:
                data = orjson.loads(await read())
                choice = data["choices"][0]
                usage = data.get("usage") or {}
                out = {
                    "model": model,
                    "created_at": now(),
                    "message": {"role": "assistant", "content": choice["message"]["content"] or ""},
                    "done": True,
                    "done_reason": choice.get("finish_reason") or "stop",
                    "total_duration": time.perf_counter_ns() - start,
                    "prompt_eval_count": usage.get("prompt_tokens", 0),
                    "eval_count": usage.get("completion_tokens", 0),
                }
                await send({"type": "http.response.start", "status": 200, "headers": JSON})
                await send({"type": "http.response.body", "body": orjson.dumps(out)})
                return
            await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
            buffer = b""
            finish, usage = "stop", {}
            async for piece in body_chunks:
                buffer += piece
                if b"\n" not in piece:
                    continue
                *lines, buffer = buffer.split(b"\n")
                out = []
                for line in lines:
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    event = orjson.loads(line[6:])
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or ():
                        content = choice["delta"].get("content")
                        finish = choice.get("finish_reason") or finish
                        if content:
                            out.append(
                                orjson.dumps(
                                    {
                                        "model": model,
                                        "created_at": now(),
                                        "message": {"role": "assistant", "content": content},
                                        "done": False,
                                    }
                                )
                            )
                if out:
                    out.append(b"")
                    await send({"type": "http.response.body", "body": b"\n".join(out), "more_body": True})
            final = {
                "model": model,
                "created_at": now(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": finish,
                "total_duration": time.perf_counter_ns() - start,
                "prompt_eval_count": usage.get("prompt_tokens", 0),
                "eval_count": usage.get("completion_tokens", 0),
            }
            await send({"type": "http.response.body", "body": orjson.dumps(final) + b"\n", "more_body": False})
        finally:
            await close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--client", default="httpx", choices=["httpx", "httpx2", "aiohttp", "raw"])
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(
        Minimal(args.upstream.rstrip("/"), args.client),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
