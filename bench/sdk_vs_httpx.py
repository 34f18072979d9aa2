"""Micro-benchmark: the `openai` SDK's streaming vs raw httpx + orjson SSE parsing, on the gateway's
hot path (receive vLLM's SSE stream, get each chunk's content as Python data).

    python -m bench.sdk_vs_httpx [--streams 200] [--concurrency 16]

The stand-in upstream runs in its own process (instant tokens), so this process's CPU time
(time.process_time) is the client's cost alone. Each client reads the same streams at two answer
lengths; a straight line through the two gives the cost per request and per chunk:

* `openai-sdk`: AsyncOpenAI.chat.completions.create(stream=True), iterating ChatCompletionChunk
  objects (pydantic models built per chunk);
* `httpx-raw+orjson`: httpx.AsyncClient.stream, aiter_raw, split on newlines, orjson.loads per
  `data:` line (what adapter/upstream.py's iter_sse_json does);
* `httpx-lines+json`: httpx aiter_lines and the stdlib json (a common naive version);
* `httpx2-raw+orjson`, `aiohttp-raw+orjson`: the same parsing on the pydantic httpx fork (what the
  `openai` SDK is built on now) and on aiohttp;
* `httptools-raw+orjson`: a bare asyncio protocol with the httptools parser (bench/load.py's client),
  the floor for any Python client.

The SDK gets its own default client (openai.DefaultAsyncHttpxClient) with the same pool limits.

Writes bench/results/sdk_vs_httpx.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.load import Conn, connect, http_request
from bench.run import RESULTS, ROOT, base_env, free_port, stop, wait_http
from bench.upstream import expected_text

MESSAGES = [{"role": "user", "content": "Tell me something."}]


async def sdk_stream(client: Any, tokens: int) -> str:
    stream = await client.chat.completions.create(
        model="bench", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    out = []
    async for chunk in stream:
        if chunk.choices:
            content = chunk.choices[0].delta.content
            if content:
                out.append(content)
    return "".join(out)


BODY = orjson.dumps({"model": "bench", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}})


async def parse_sse(pieces: Any) -> str:
    """adapter/upstream.py's iter_sse_json, inlined: bytes lines, orjson per `data:` line."""
    out = []
    buffer = b""
    async for raw in pieces:
        buffer = buffer + raw if buffer else raw
        if b"\n" not in raw:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue  # read on to the end of the body: the connection goes back to the pool
            event = orjson.loads(payload)
            choices = event.get("choices")
            if choices:
                content = choices[0]["delta"].get("content")
                if content:
                    out.append(content)
    return "".join(out)


async def httpx_raw_stream(client: Any, tokens: int) -> str:
    async with client.stream(
        "POST", "/v1/chat/completions", content=BODY, headers={"Content-Type": "application/json"}
    ) as r:
        return await parse_sse(r.aiter_raw())


async def aiohttp_raw_stream(session: Any, url: str, tokens: int) -> str:
    async with session.post(url + "/v1/chat/completions", data=BODY, headers={"Content-Type": "application/json"}) as r:
        return await parse_sse(r.content.iter_any())


async def httpx_lines_stream(client: httpx.AsyncClient, tokens: int) -> str:
    out = []
    async with client.stream(
        "POST", "/v1/chat/completions", content=BODY, headers={"Content-Type": "application/json"}
    ) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            event = json.loads(payload)
            choices = event.get("choices")
            if choices:
                content = choices[0]["delta"].get("content")
                if content:
                    out.append(content)
    return "".join(out)


class ConnPool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.free: list[Conn] = []
        self.req = http_request("POST", f"{host}:{port}", "/v1/chat/completions", BODY)

    async def stream(self, tokens: int) -> str:
        conn = self.free.pop() if self.free else await connect(self.host, self.port)
        _, body, _, _, _ = await conn.request(self.req, False)
        if not conn.closed:
            self.free.append(conn)
        out = []
        for line in body.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                choices = orjson.loads(line[6:]).get("choices")
                if choices:
                    content = choices[0]["delta"].get("content")
                    if content:
                        out.append(content)
        return "".join(out)


async def configure(url: str, tokens: int) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/bench/config", json={"tokens": tokens, "delay_ms": 0})
        r.raise_for_status()


async def measure(name: str, fn: Any, url: str, tokens: int, streams: int, concurrency: int) -> dict[str, float]:
    await configure(url, tokens)
    want = expected_text(tokens)
    await asyncio.gather(*(fn(tokens) for _ in range(concurrency)))  # warm the pool
    queue = list(range(streams))
    bad = 0

    async def worker() -> None:
        nonlocal bad
        while queue:
            queue.pop()
            if await fn(tokens) != want:
                bad += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"{name}: {bad} answers not whole")
    return {"cpu_s": cpu, "wall_s": wall, "streams": streams, "tokens": tokens}


async def run(url: str, streams: int, concurrency: int, short: int, long: int, repeat: int) -> dict[str, Any]:
    import aiohttp
    import httpx2
    import openai
    from openai import AsyncOpenAI

    size = concurrency * 2
    hx = httpx.AsyncClient(
        base_url=url, limits=httpx.Limits(max_connections=size, max_keepalive_connections=size), timeout=30.0
    )
    hx2 = httpx2.AsyncClient(
        base_url=url, limits=httpx2.Limits(max_connections=size, max_keepalive_connections=size), timeout=30.0
    )
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=size), auto_decompress=False)
    sdk_http = openai.DefaultAsyncHttpxClient(
        limits=httpx2.Limits(max_connections=size, max_keepalive_connections=size)
    )
    sdk = AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, http_client=sdk_http)
    port = int(url.rsplit(":", 1)[1])
    pool = ConnPool("127.0.0.1", port)
    clients = {
        "openai-sdk": lambda t: sdk_stream(sdk, t),
        "httpx-raw+orjson": lambda t: httpx_raw_stream(hx, t),
        "httpx-lines+json": lambda t: httpx_lines_stream(hx, t),
        "httpx2-raw+orjson": lambda t: httpx_raw_stream(hx2, t),
        "aiohttp-raw+orjson": lambda t: aiohttp_raw_stream(session, url, t),
        "httptools-raw+orjson": pool.stream,
    }
    results: dict[str, Any] = {}
    for name, fn in clients.items():
        best: dict[int, float] = {}
        for _ in range(repeat):  # best of N: the machine is noisy, CPU time only grows with noise
            for tokens in (short, long):
                m = await measure(name, fn, url, tokens, streams, concurrency)
                per_stream = m["cpu_s"] / streams
                best[tokens] = min(best.get(tokens, float("inf")), per_stream)
        per_chunk = (best[long] - best[short]) / (long - short)
        per_request = best[short] - per_chunk * short
        results[name] = {
            "us_per_chunk": round(per_chunk * 1e6, 2),
            "us_per_request": round(per_request * 1e6, 1),
            f"us_per_stream_{short}_tokens": round(best[short] * 1e6, 1),
            f"us_per_stream_{long}_tokens": round(best[long] * 1e6, 1),
        }
    await hx.aclose()
    await hx2.aclose()
    await session.close()
    await sdk.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="openai SDK streaming vs raw httpx streaming, CPU per chunk")
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--short", type=int, default=8)
    p.add_argument("--long", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "sdk_vs_httpx.json")
    args = p.parse_args(argv)
    port = free_port()
    log = open(Path("/tmp") / f"bench-sdk-upstream-{port}.log", "wb")
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(port)],
        cwd=ROOT,
        env=base_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", upstream, what="the stand-in upstream")
        import uvloop

        results = uvloop.run(
            run(f"http://127.0.0.1:{port}", args.streams, args.concurrency, args.short, args.long, args.repeat)
        )
    finally:
        stop(upstream)
        log.close()
    import openai

    doc = {
        "openai_version": openai.__version__,
        "httpx_version": httpx.__version__,
        "concurrency": args.concurrency,
        "streams": args.streams,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(
        f"client CPU per stream chunk, {args.streams} streams x {args.concurrency} concurrent, best of {args.repeat}:"
    )
    print(f"  {'client':<22} {'us/chunk':>9} {'us/request':>11}")
    for name, r in results.items():
        print(f"  {name:<22} {r['us_per_chunk']:>9.2f} {r['us_per_request']:>11.1f}")
    base = results["httpx-raw+orjson"]["us_per_chunk"]
    if base > 0:
        print(f"openai SDK / raw httpx per chunk: {results['openai-sdk']['us_per_chunk'] / base:.2f}x")
    print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
