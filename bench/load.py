"""The load generator: one process, asyncio on uvloop, raw HTTP/1.1 keep-alive connections parsed by
httptools (the C parser uvicorn uses), so the client costs a few microseconds per chunk and the same
on both paths.

`python -m bench.load SPEC_JSON` runs the phases of one target and prints the figures as JSON.

A target is either `openai` (OpenAI SSE on /v1/chat/completions: the stand-in directly, or through
nginx) or `ollama` (Ollama NDJSON on /api/chat: through the gateway). Every answer is checked
whole: all tokens in order, the closing `data: [DONE]` (OpenAI) or `done: true` line (Ollama).
A chunk is a content-bearing event (OpenAI) or line (Ollama).

While the measured part of a phase runs, the CPU seconds (utime + stime from /proc/<pid>/stat) of
the watched processes are sampled at its start and end; their VmHWM / VmRSS at its end.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

from bench.upstream import expected_text

CLK_TCK = os.sysconf("SC_CLK_TCK")
# A content-bearing chunk on either side: `"content":"` followed by something (the role chunk
# has `"content":""`). Used only to timestamp the first one; counting is done by parsing.
FIRST_CONTENT = re.compile(rb'"content":"[^"]')
PROMPT = [{"role": "user", "content": "Tell me something."}]


# ---- /proc --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return float("nan")
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def memory_mb(pid: int) -> dict[str, float]:
    out = {"hwm_mb": float("nan"), "rss_mb": float("nan")}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out["hwm_mb"] = int(line.split()[1]) / 1024
                elif line.startswith("VmRSS:"):
                    out["rss_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def group_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


# ---- HTTP client --------------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.body: list[bytes] = []
        self.status = 0
        self.first_at = 0.0
        self.watch_first = False
        self.closed = False
        self.keep_alive = True
        self.window: Window | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # Read here: once the message is complete, httptools' parser has reset and
        # should_keep_alive() says False for every response, which closed each connection.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        if self.watch_first:
            if not self.first_at and FIRST_CONTENT.search(body):
                self.first_at = now
            window = self.window
            if window is not None and window.t0 <= now < window.t1:
                # Content chunks in this piece: `"content":"x` (the role chunk and the final line
                # carry `"content":""`). Exact for whole events; the full parse checks every answer.
                window.chunks += body.count(b'"content":"') - body.count(b'"content":""')
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def request(self, raw: bytes, watch_first: bool) -> tuple[int, bytes, float, float, float]:
        """Send one request: (status, body, sent_at, first_content_at or 0, done_at)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.body = []
        self.status = 0
        self.first_at = 0.0
        self.watch_first = watch_first
        sent = time.perf_counter()
        self.transport.write(raw)
        await self.waiter
        done = time.perf_counter()
        if not self.keep_alive:
            self.close()
        return self.status, b"".join(self.body), sent, self.first_at, done

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, host, port)
    return conn


def http_request(method: str, host: str, path: str, body: bytes) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Accept: */*\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# ---- answer checks --------------------------------------------------------------------------------


def check_openai_stream(body: bytes, tokens: int) -> tuple[int, str | None]:
    """(content chunks, problem or None) for an OpenAI SSE body."""
    chunks, text, finish, done = 0, [], None, False
    for event in body.split(b"\n\n"):
        event = event.strip()
        if not event:
            continue
        if not event.startswith(b"data: "):
            return chunks, f"not an SSE data event: {event[:80]!r}"
        payload = event[6:]
        if payload == b"[DONE]":
            done = True
            continue
        obj = orjson.loads(payload)
        if "error" in obj:
            return chunks, f"error event: {obj['error']}"
        for choice in obj.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                chunks += 1
                text.append(content)
            finish = choice.get("finish_reason") or finish
    return chunks, _whole(chunks, "".join(text), tokens, done and finish is not None, "[DONE]")


def check_ollama_stream(body: bytes, tokens: int) -> tuple[int, str | None]:
    chunks, text, done = 0, [], False
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        obj = orjson.loads(line)
        if "error" in obj:
            return chunks, f"error line: {obj['error']}"
        if obj.get("done"):
            done = bool(obj.get("done_reason"))
            continue
        content = (obj.get("message") or {}).get("content") or obj.get("response")
        if content:
            chunks += 1
            text.append(content)
    return chunks, _whole(chunks, "".join(text), tokens, done, "done line")


def _whole(chunks: int, text: str, tokens: int, closed: bool, closer: str) -> str | None:
    if chunks != tokens or text != expected_text(tokens):
        return f"answer not whole: {chunks}/{tokens} chunks"
    if not closed:
        return f"no closing {closer}"
    return None


def check_openai_whole(body: bytes, tokens: int) -> str | None:
    obj = orjson.loads(body)
    if obj.get("choices", [{}])[0].get("message", {}).get("content") != expected_text(tokens):
        return "answer not whole"
    return None


def check_ollama_whole(body: bytes, tokens: int) -> str | None:
    obj = orjson.loads(body)
    if not obj.get("done") or (obj.get("message") or {}).get("content") != expected_text(tokens):
        return "answer not whole"
    return None


# ---- phases ---------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms_summary(seconds: list[float]) -> dict[str, Any]:
    p50, p99 = percentile(seconds, 0.50), percentile(seconds, 0.99)
    return {
        "n": len(seconds),
        "p50_ms": None if p50 is None else round(p50 * 1000, 4),
        "p99_ms": None if p99 is None else round(p99 * 1000, 4),
        "mean_ms": round(sum(seconds) / len(seconds) * 1000, 4) if seconds else None,
    }


class Target:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.kind = spec["kind"]  # "openai" | "ollama"
        parts = urlsplit(spec["url"])
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        up = urlsplit(spec["upstream"])
        self.up_host, self.up_port = up.hostname or "127.0.0.1", up.port or 80
        self.watch: dict[str, list[int]] = {k: list(v) for k, v in spec.get("watch", {}).items()}
        self.model = spec.get("model", "bench")
        path = "/v1/chat/completions" if self.kind == "openai" else "/api/chat"
        hostport = f"{self.host}:{self.port}"
        if self.kind == "openai":
            stream_body = {
                "model": self.model,
                "messages": PROMPT,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            whole_body = {"model": self.model, "messages": PROMPT, "stream": False}
            self.check_stream, self.check_whole = check_openai_stream, check_openai_whole
        else:
            stream_body = {"model": self.model, "messages": PROMPT, "stream": True}
            whole_body = {"model": self.model, "messages": PROMPT, "stream": False}
            self.check_stream, self.check_whole = check_ollama_stream, check_ollama_whole
        self.stream_req = http_request("POST", hostport, path, orjson.dumps(stream_body))
        self.whole_req = http_request("POST", hostport, path, orjson.dumps(whole_body))

    async def configure_upstream(self, tokens: int, delay_ms: float, first_delay_ms: float | None) -> None:
        conn = await connect(self.up_host, self.up_port)
        body = orjson.dumps({"tokens": tokens, "delay_ms": delay_ms, "first_delay_ms": first_delay_ms})
        status, _, _, _, _ = await conn.request(
            http_request("POST", f"{self.up_host}:{self.up_port}", "/bench/config", body), False
        )
        conn.close()
        if status != 200:
            raise RuntimeError(f"stand-in refused its configuration ({status})")

    def sample(self) -> dict[str, float]:
        return {name: group_cpu(pids) for name, pids in self.watch.items()}

    async def run_phase(self, phase: dict[str, Any]) -> dict[str, Any]:
        """Non-streaming phases: `rounds` requests per connection after `warmup_rounds`.

        Streaming phases: each connection runs streams back to back; chunks are counted as they
        arrive inside a window of `duration_s` that opens once every connection is running and
        `warmup_s` has passed, and CPU is sampled at its edges: a steady-state rate. With `stagger`
        (the default) connection i starts i/N of a stream's length late, so starts are spread
        evenly as in steady traffic; without it all start at once and every round is a burst of N
        simultaneous requests (`--burst`). Streams still running when the window closes finish
        (and are checked whole) but their later chunks are not counted.
        """
        stream = phase["type"] == "stream"
        tokens = int(phase["tokens"])
        concurrency = int(phase["concurrency"])
        await self.configure_upstream(tokens, phase["delay_ms"], phase.get("first_delay_ms"))
        raw = self.stream_req if stream else self.whole_req
        check = self.check_stream if stream else self.check_whole
        errors: list[str] = []
        latencies: list[float] = []
        ttfts: list[float] = []
        checked_chunks = 0
        incomplete = 0
        window = Window()

        conns = await asyncio.gather(
            *(connect(self.host, self.port) for _ in range(concurrency)), return_exceptions=True
        )
        live = [c for c in conns if isinstance(c, Conn)]
        errors.extend(f"connect: {c!r}" for c in conns if not isinstance(c, Conn))
        for c in live:
            c.window = window

        async def one(slot: int, measured: bool) -> None:
            nonlocal checked_chunks, incomplete
            conn = live[slot]
            if conn.closed:
                try:
                    conn = live[slot] = await connect(self.host, self.port)
                    conn.window = window
                except OSError as exc:
                    errors.append(f"reconnect: {exc!r}")
                    await asyncio.sleep(0.01)
                    return
            try:
                status, body, sent, first, done = await conn.request(raw, stream)
            except Exception as exc:
                errors.append(f"request: {exc!r}")
                conn.close()
                return
            if status != 200:
                errors.append(f"HTTP {status}: {body[:200]!r}")
                return
            try:
                if stream:
                    n, problem = check(body, tokens)
                    checked_chunks += n
                else:
                    problem = check(body, tokens)
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
                problem = f"malformed answer: {exc!r}"
            if problem:
                if problem.startswith(("error", "not an SSE", "malformed")):
                    errors.append(problem)
                else:
                    incomplete += 1
                    if incomplete <= 3:
                        sys.stderr.write(f"incomplete answer: {problem}\n")
            if measured or window.t0 <= sent < window.t1:
                latencies.append(done - sent)
                if first:
                    ttfts.append(first - sent)

        loop = asyncio.get_running_loop()
        if stream:
            length = tokens * float(phase["delay_ms"]) / 1000.0
            stagger = bool(phase.get("stagger", True)) and concurrency > 1 and length > 0
            begin = time.perf_counter()
            window.t0 = begin + (length if stagger else 0.0) + float(phase.get("warmup_s", 1.0))
            window.t1 = window.t0 + float(phase["duration_s"])

            async def worker(slot: int) -> None:
                if stagger:
                    await asyncio.sleep(slot * length / concurrency)
                while time.perf_counter() < window.t1:
                    await one(slot, False)

            tasks = [asyncio.ensure_future(worker(i)) for i in range(len(live))]
            await asyncio.sleep(max(window.t0 - time.perf_counter(), 0))
            cpu0, own0 = self.sample(), time.process_time()
            profiler = _start_profiler(phase.get("profile_cmd"), self.watch)
            await asyncio.sleep(max(window.t1 - time.perf_counter(), 0))
            cpu1, own = self.sample(), time.process_time() - own0
            wall = window.t1 - window.t0
            mem = {name: _memory(pids) for name, pids in self.watch.items()}
            await asyncio.gather(*tasks)  # let the streams in flight finish, and check them
            _stop_profiler(profiler)
            chunks = window.chunks
        else:
            rounds, warmup = int(phase["rounds"]), int(phase.get("warmup_rounds", 1))

            async def worker_n(slot: int, n: int, measured: bool) -> None:
                for _ in range(n):
                    await one(slot, measured)

            if warmup:
                await asyncio.gather(*(worker_n(i, warmup, False) for i in range(len(live))))
                latencies.clear()
            cpu0, own0 = self.sample(), time.process_time()
            t0 = time.perf_counter()
            await asyncio.gather(*(worker_n(i, rounds, True) for i in range(len(live))))
            wall = time.perf_counter() - t0
            cpu1, own = self.sample(), time.process_time() - own0
            mem = {name: _memory(pids) for name, pids in self.watch.items()}
            chunks = 0
        del loop
        for c in live:
            c.close()

        result: dict[str, Any] = {
            "name": phase["name"],
            "type": phase["type"],
            "concurrency": concurrency,
            "tokens": tokens,
            "delay_ms": phase["delay_ms"],
            "requests": len(latencies),
            "errors": len(errors),
            "error_samples": errors[:5],
            "incomplete": incomplete,
            "wall_s": round(wall, 4),
            "latency": ms_summary(latencies),
            "cpu_s": {name: round(cpu1[name] - cpu0[name], 4) for name in cpu0},
            "loadgen_cpu_s": round(own, 4),
            "memory": mem,
        }
        if stream:
            result["stagger"] = stagger
            result["chunks"] = chunks
            result["checked_chunks"] = checked_chunks
            result["chunks_per_s"] = round(chunks / wall, 2) if wall > 0 else None
            result["ttft"] = ms_summary(ttfts)
            result["cpu_s_per_1k_chunks"] = {
                name: (round(v / chunks * 1000, 5) if chunks else None) for name, v in result["cpu_s"].items()
            }
        return result


class Window:
    """The measured window of a streaming phase, and the content chunks that arrived inside it."""

    __slots__ = ("chunks", "t0", "t1")

    def __init__(self) -> None:
        self.t0 = self.t1 = float("inf")
        self.chunks = 0


def _memory(pids: list[int]) -> dict[str, float]:
    total = {"hwm_mb": 0.0, "rss_mb": 0.0}
    for p in pids:
        m = memory_mb(p)
        total["hwm_mb"] += m["hwm_mb"]
        total["rss_mb"] += m["rss_mb"]
    return {k: round(v, 2) for k, v in total.items()}


def _start_profiler(cmd: list[str] | None, watch: dict[str, list[int]]) -> subprocess.Popen[bytes] | None:
    """Attach a sampling profiler (py-spy) to the watched proxy for the measured part of a phase."""
    if not cmd:
        return None
    pid = watch.get("proxy", [0])[0]
    argv = [a.replace("{pid}", str(pid)) for a in cmd]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)  # let it attach before the load starts
    return proc


def _stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
        if proc.returncode not in (0, -signal.SIGINT):
            sys.stderr.write(f"profiler exited {proc.returncode}: {err.decode(errors='replace')[-500:]}\n")
    except subprocess.TimeoutExpired:
        proc.kill()


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target(spec)
    phases = []
    for phase in spec["phases"]:
        phases.append(await target.run_phase(phase))
        await asyncio.sleep(spec.get("pause_s", 0.3))
    return {"kind": target.kind, "url": spec["url"], "phases": phases}


def main() -> None:
    spec = orjson.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    try:
        import uvloop

        result = uvloop.run(main_async(spec))
    except ImportError:
        result = asyncio.run(main_async(spec))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
