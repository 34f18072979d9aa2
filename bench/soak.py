"""Soak: many streams for minutes, with clients that leave mid-answer, and the gateway's memory.

    python -m bench.soak                                   # 128 streams, 3 minutes, 10 % disconnects
    python -m bench.soak --streams 256 --minutes 10 --disconnect-share 0.2

Three processes: the stand-in upstream (bench/upstream.py), the gateway (`python -m adapter`), and
this one, which keeps `--streams` streaming /api/chat requests open at all times. A share of them
hang up after a few chunks (the gateway must close the upstream request and free the slot). It
prints the gateway's RSS at the start of the measured part (after `--warmup-s`), in its middle and at
its end, the drift, the request counts and every error: an HTTP status other than 200, a stream
without `done: true`, an `{"error"}` line, or a client that had to give up.

Runs outside the test suite; its figures go in closing notes (and bench/results/soak-latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from bench.run import PY, RESULTS, ROOT, Stack, base_env, free_port, wait_http
from bench.upstream import MODEL

BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Tell me something."}]})


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def request_bytes(port: int) -> bytes:
    return (
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (port, len(BODY), BODY)
    )


class Tally:
    def __init__(self) -> None:
        self.done = 0
        self.hung_up = 0
        self.errors: Counter[str] = Counter()


async def one_stream(port: int, hang_up_after: int | None, give_up_s: float, tally: Tally) -> None:
    """One request; `hang_up_after`: close after that many bytes of body have come (a client that
    leaves mid-answer), else read to the end and check the answer is whole."""
    try:
        async with asyncio.timeout(give_up_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request_bytes(port))
                status_line = await reader.readline()
                if b" 200 " not in status_line:
                    tally.errors[f"status {status_line[9:12].decode(errors='replace')}"] += 1
                    return
                if hang_up_after is not None:
                    await reader.readexactly(hang_up_after)
                    tally.hung_up += 1
                    return
                body = await reader.read()
            finally:
                writer.close()
    except TimeoutError:
        tally.errors["client gave up (timeout)"] += 1
        return
    except (OSError, asyncio.IncompleteReadError) as exc:
        tally.errors[type(exc).__name__] += 1
        return
    if b'"error"' in body:
        tally.errors["error line"] += 1
    elif b'"done":true' not in body:
        tally.errors["no done line"] += 1
    else:
        tally.done += 1


async def soak(port: int, streams: int, seconds: float, share: float, tally: Tally) -> None:
    stop_at = time.monotonic() + seconds
    rng = random.Random(7)

    async def client_slot(slot: int) -> None:
        await asyncio.sleep(slot * 0.01)  # staggered, as real clients arrive
        while time.monotonic() < stop_at:
            hang_up = rng.randint(300, 3000) if rng.random() < share else None
            await one_stream(port, hang_up, 60.0, tally)

    await asyncio.gather(*(client_slot(i) for i in range(streams)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=128)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--disconnect-share", type=float, default=0.1, help="share of clients that hang up early")
    parser.add_argument("--warmup-s", type=float, default=20.0, help="load before the first RSS reading")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, Stack(Path(tmp)) as stack:
        up_port, gw_port = free_port(), free_port()
        upstream = stack.start("upstream", [PY, "-m", "bench.upstream", "--port", str(up_port)], env=base_env())
        wait_http(f"http://127.0.0.1:{up_port}/health", upstream, what="the stand-in upstream")
        env = base_env()
        env.update(
            VLLM_BASE_URL=f"http://127.0.0.1:{up_port}",
            VISION_OLLAMA_URL=f"http://127.0.0.1:{free_port()}",
            ADAPTER_LOG_LEVEL="warning",
        )
        gateway = stack.start("gateway", [PY, "-m", "adapter", "--port", str(gw_port)], env=env, cwd=ROOT)
        wait_http(f"http://127.0.0.1:{gw_port}/", gateway, what="the gateway")
        import urllib.request

        config = orjson.dumps({"tokens": args.tokens, "delay_ms": args.delay_ms})
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{up_port}/bench/config", data=config, method="POST")
        ).read()

        tally = Tally()
        seconds = args.warmup_s + args.minutes * 60
        readings: dict[str, float] = {"before load": rss_mb(gateway.pid)}

        async def run() -> None:
            load = asyncio.ensure_future(soak(gw_port, args.streams, seconds, args.disconnect_share, tally))
            await asyncio.sleep(args.warmup_s)
            readings["start (after warm-up)"] = rss_mb(gateway.pid)
            await asyncio.sleep(args.minutes * 30)
            readings["middle"] = rss_mb(gateway.pid)
            await load
            readings["end"] = rss_mb(gateway.pid)

        began = time.monotonic()
        asyncio.run(run())
        wall = time.monotonic() - began
        with contextlib.suppress(OSError):
            readings["after load (5 s idle)"] = (time.sleep(5), rss_mb(gateway.pid))[1]
        alive = gateway.poll() is None

    drift = readings["end"] - readings["start (after warm-up)"]
    result: dict[str, Any] = {
        "streams": args.streams,
        "minutes": args.minutes,
        "disconnect_share": args.disconnect_share,
        "wall_s": round(wall, 1),
        "rss_mb": {k: round(v, 1) for k, v in readings.items()},
        "drift_after_warmup_mb": round(drift, 1),
        "whole_answers": tally.done,
        "hung_up_on_purpose": tally.hung_up,
        "errors": dict(tally.errors),
        "gateway_alive": alive,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak-latest.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    if tally.errors or not alive:
        sys.exit(1)


if __name__ == "__main__":
    main()
