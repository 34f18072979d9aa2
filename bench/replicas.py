"""Balancing between replicas: how evenly requests spread, and how well shared prefixes stick.

    python -m bench.replicas                       # 3 replicas, 128 streams, 15 s per phase
    python -m bench.replicas --replicas 4 --streams 256 --seconds 30 --workers 2

Processes: `--replicas` stand-in vLLM servers (bench/upstream.py, each its own process, one model),
the gateway (`python -m adapter`, VLLM_BASE_URL listing them all, so they are replicas of one
model) and this load generator. Two phases, each `--streams` concurrent streaming /api/chat clients:

- uniform: every request has a prompt of its own. Reported: requests per replica, and the largest
  deviation from an even split (the target: within 10 %).
- shared prefix: `--tenants` services, each with its own long system prompt (the kind a RAG or
  extraction service sends with every request), requests mixed at random. A tenant's requests that
  land on the replica that served most of them are prefix-cache hits (vLLM already holds that
  prefix there). Reported: the hit rate (target: >= 90 %) and requests per replica (the load bound
  keeps it near even).

Runs outside the test suite; figures also go to bench/results/replicas-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from bench.run import PY, RESULTS, ROOT, Stack, base_env, free_port, wait_http
from bench.upstream import MODEL


def body_of(system: str | None, user: str) -> bytes:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return orjson.dumps({"model": MODEL, "messages": messages})


async def one(port: int, body: bytes, request_id: str) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"X-Request-ID: %s\r\nContent-Length: %d\r\n\r\n%s" % (request_id.encode(), len(body), body)
        )
        answer = await reader.read()
    finally:
        writer.close()
    return b" 200 " in answer[:16] and b'"done":true' in answer


async def phase(port: int, streams: int, seconds: float, make: Any) -> dict[str, int]:
    stop_at = time.monotonic() + seconds
    counts = {"ok": 0, "failed": 0}
    n = 0

    async def client(slot: int) -> None:
        nonlocal n
        await asyncio.sleep(slot * 0.005)
        while time.monotonic() < stop_at:
            n += 1
            body, request_id = make(n)
            counts["ok" if await one(port, body, request_id) else "failed"] += 1

    await asyncio.gather(*(client(i) for i in range(streams)))
    return counts


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST")
    with urllib.request.urlopen(request) as r:
        return orjson.loads(r.read())


def stats(url: str) -> Any:
    with urllib.request.urlopen(url + "/bench/stats") as r:
        return orjson.loads(r.read())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--streams", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="ADAPTER_WORKERS of the gateway")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)

    rng = random.Random(11)
    systems = [f"You are service {t}. " + " ".join(f"rule-{t}-{i}" for i in range(300)) for t in range(args.tenants)]
    result: dict[str, Any] = {"replicas": args.replicas, "streams": args.streams, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="replicas-") as tmp, Stack(Path(tmp)) as stack:
        ups = []
        for r in range(args.replicas):
            port = free_port()
            proc = stack.start(f"upstream{r}", [PY, "-m", "bench.upstream", "--port", str(port)], env=base_env())
            wait_http(f"http://127.0.0.1:{port}/health", proc, what="a stand-in replica")
            url = f"http://127.0.0.1:{port}"
            post(url + "/bench/config", {"tokens": args.tokens, "delay_ms": args.delay_ms})
            ups.append(url)
        gw_port = free_port()
        env = base_env()
        env.update(
            VLLM_BASE_URL=",".join(ups),
            VISION_OLLAMA_URL=f"http://127.0.0.1:{free_port()}",
            ADAPTER_LOG_LEVEL="warning",
            ADAPTER_WORKERS=str(args.workers),
        )
        gateway = stack.start("gateway", [PY, "-m", "adapter", "--port", str(gw_port)], env=env, cwd=ROOT)
        wait_http(f"http://127.0.0.1:{gw_port}/", gateway, what="the gateway")

        def uniform(n: int) -> tuple[bytes, str]:
            return body_of(None, f"question {n} {rng.random()}"), f"u-{n}"

        def shared(n: int) -> tuple[bytes, str]:
            tenant = rng.randrange(args.tenants)
            return body_of(systems[tenant], f"input {n}"), f"t{tenant}-{n}"

        for name, make in (("uniform", uniform), ("shared_prefix", shared)):
            for url in ups:
                post(url + "/bench/reset", {})
            counts = asyncio.run(phase(gw_port, args.streams, args.seconds, make))
            per_replica = [stats(url) for url in ups]
            served = [s["requests"] for s in per_replica]
            mean = sum(served) / len(served)
            entry: dict[str, Any] = {
                "requests": counts,
                "per_replica": served,
                "max_deviation_from_even": round(max(abs(x - mean) for x in served) / mean, 4) if mean else None,
            }
            if name == "shared_prefix":
                groups = {f"t{t}" for t in range(args.tenants)}
                hits = sum(max(s["by_group"].get(g, 0) for s in per_replica) for g in groups)
                total = sum(s["by_group"].get(g, 0) for s in per_replica for g in groups)
                entry["prefix_hit_rate"] = round(hits / total, 4) if total else None
            result[name] = entry
            print(f"[replicas] {name}: {entry}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replicas-latest.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
