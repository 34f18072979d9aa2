"""A fast stand-in for vLLM's OpenAI server, for the benchmark. Runs in its own process.

`python -m bench.upstream --port P [--tokens 64] [--delay-ms 20]`

Speaks what vLLM 0.32 sends on `/v1/chat/completions`:

* streaming: a role chunk (`delta: {role: assistant, content: ""}`), one content chunk per token,
  the finish reason riding on the last token chunk when `max_tokens` cut the answer (`length`),
  else a separate `delta: {}` chunk with `finish_reason: "stop"`; then, when
  `stream_options.include_usage` is set, a `choices: []` chunk with `usage`; then `data: [DONE]`;
* non-streaming: one `chat.completion` object (after tokens x delay);
* `/v1/models`: one model, `bench`; `/health`: 200.

Raw ASGI on uvicorn (uvloop + httptools), chunks pre-encoded once per configuration, so it is
never the bottleneck. Tokens are paced on a fixed schedule (token i is due at start + first_delay
+ i x delay), the way an accelerator produces them whatever the host CPU is doing: a request that
falls behind catches up instead of drifting, so the chunk rate measures the path, not the
stand-in's own scheduling.

`POST /bench/config {"tokens": 64, "delay_ms": 20, "first_delay_ms": null}` changes the answer
shape for the requests that follow (the load generator sets it before each phase);
`GET /bench/stats` returns counters.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from typing import Any

import orjson

MODEL = "bench"
MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 4096}],
    }
)
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
ROLE_CHOICES = (
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
)
STOP_CHOICES = b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}\n\n'


def token_text(i: int) -> str:
    """Token i of every answer: distinct, JSON-safe, a few bytes like a real token."""
    return f" t{i}"


def expected_text(n: int) -> str:
    return "".join(token_text(i) for i in range(n))


class Config:
    __slots__ = ("delay", "first_delay", "pieces", "tokens")

    def __init__(self, tokens: int = 64, delay_ms: float = 20.0, first_delay_ms: float | None = None) -> None:
        self.tokens = max(1, int(tokens))
        self.delay = max(0.0, float(delay_ms)) / 1000.0
        self.first_delay = self.delay if first_delay_ms is None else max(0.0, float(first_delay_ms)) / 1000.0
        # The part of each content chunk after `"model":"bench",`: pre-encoded once.
        self.pieces = [
            b'"choices":[{"index":0,"delta":{"content":'
            + orjson.dumps(token_text(i))
            + b'},"logprobs":null,"finish_reason":null}]}\n\n'
            for i in range(self.tokens)
        ]

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "delay_ms": self.delay * 1000, "first_delay_ms": self.first_delay * 1000}


class Upstream:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.ids = itertools.count()
        self.stats: dict[str, Any] = {"requests": 0, "streams": 0, "completed": 0, "cancelled": 0, "active": 0}
        # Requests per client group: the part of the X-Request-ID before its first "-" (bench.replicas
        # sends "t3-..." for a tenant's requests; the gateway passes the id on with a suffix).
        self.by_group: dict[str, int] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/v1/chat/completions" and method == "POST":
            for name, value in scope["headers"]:
                if name == b"x-request-id":
                    group = value.split(b"-", 1)[0].decode("latin-1")
                    self.by_group[group] = self.by_group.get(group, 0) + 1
            await self.chat(receive, send)
        elif path == "/v1/models":
            await self.whole(send, 200, MODELS_BODY)
        elif path == "/health":
            await self.whole(send, 200, b"")
        elif path == "/bench/config" and method == "POST":
            body = orjson.loads(await read_body(receive) or b"{}")
            self.config = Config(body.get("tokens", 64), body.get("delay_ms", 20.0), body.get("first_delay_ms"))
            await self.whole(send, 200, orjson.dumps(self.config.as_dict()))
        elif path == "/bench/stats":
            stats = {**self.stats, "by_group": self.by_group, "config": self.config.as_dict()}
            await self.whole(send, 200, orjson.dumps(stats))
        elif path == "/bench/reset" and method == "POST":
            self.stats.update(requests=0, streams=0, completed=0, cancelled=0)
            self.by_group = {}
            await self.whole(send, 200, b"{}")
        else:
            await self.whole(send, 404, b'{"error":{"message":"not found","type":"NotFoundError","code":404}}')

    @staticmethod
    async def whole(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": body})

    async def chat(self, receive: Any, send: Any) -> None:
        try:
            body = orjson.loads(await read_body(receive))
        except orjson.JSONDecodeError:
            await self.whole(send, 400, b'{"error":{"message":"JSON decode error","type":"Bad Request","code":400}}')
            return
        config = self.config
        self.stats["requests"] += 1
        n, finish = config.tokens, "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit <= n:
            n, finish = limit, "length"
        cid = f"chatcmpl-{os.getpid():x}{next(self.ids):012x}"
        created = int(time.time())
        prompt_tokens = 8
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n, "completion_tokens": n}
        if not body.get("stream"):
            if config.first_delay or config.delay:
                await asyncio.sleep(config.first_delay + config.delay * max(n - 1, 0))
            message = {
                "role": "assistant",
                "content": expected_text(n),
                "refusal": None,
                "reasoning": None,
                "tool_calls": [],
            }
            resp = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": body.get("model", MODEL),
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish, "stop_reason": None}
                ],
                "usage": usage,
                "prompt_logprobs": None,
            }
            self.stats["completed"] += 1
            await self.whole(send, 200, orjson.dumps(resp))
            return

        self.stats["streams"] += 1
        self.stats["active"] += 1
        head = (
            b'data: {"id":"'
            + cid.encode()
            + b'","object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":"bench",'
        )
        done = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            await send(
                {
                    "type": "http.response.body",
                    "body": head + ROLE_CHOICES,
                    "more_body": True,
                }
            )
            loop = asyncio.get_running_loop()
            start = loop.time()
            pieces = config.pieces
            last = n - 1
            for i in range(n):
                if config.delay or config.first_delay:
                    wait = start + config.first_delay + i * config.delay - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if i == last and finish == "length":
                    chunk = head + pieces[i].replace(b'"finish_reason":null', b'"finish_reason":"length"')
                else:
                    chunk = head + pieces[i]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            tail = b""
            if finish != "length":
                tail += head + STOP_CHOICES
            if (body.get("stream_options") or {}).get("include_usage"):
                tail += head + b'"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
            tail += b"data: [DONE]\n\n"
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            done = True
            self.stats["completed"] += 1
        finally:
            self.stats["active"] -= 1
            if not done:
                self.stats["cancelled"] += 1


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(
        Upstream(Config(args.tokens, args.delay_ms)),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        backlog=4096,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
