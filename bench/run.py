"""The benchmark: the gateway side by side with talking to the upstream directly.

    python -m bench            # full run (about 2 minutes), writes bench/results/latest.json
    python -m bench --quick    # under a minute: direct and gateway only, fewer rounds
    python -m bench --profile  # py-spy on the gateway during the 256-stream phase

Four processes: the stand-in upstream (bench/upstream.py), the proxy under test (the gateway,
`python -m adapter`; optionally nginx and bench/minimal.py), the load generator (bench/load.py,
one run per target), and this orchestrator, which only starts them and prints the table.

Targets: `direct` (OpenAI SSE to the stand-in), `gateway` (Ollama NDJSON through the gateway),
`gateway-traced` (the gateway with LLM_TRACE_EXPORTER=otlp, exporting to a local OTLP sink),
`nginx` (OpenAI SSE through a plain nginx hop, proxy_buffering off: the floor for one extra hop,
when nginx is installed), `minimal` (a minimal Python translator: the floor for a Python one).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.server
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable

# The targets for the gateway, on a 2-core machine (stand-in upstream, same run).
TARGETS = {
    "added_nonstream_p50_c1_ms": 0.5,
    "added_ttft_p50_ms": 0.5,
    "chunk_rate_ratio_at_max": 0.97,
    "cpu_s_per_1k_chunks": 0.03,
    # Issue 13: gateway CPU per 1,000 streamed chunks at most twice the nginx hop's, in the same run.
    "cpu_per_chunk_vs_nginx": 2.0,
    "peak_rss_mb": 100.0,
}


# ---- phases ---------------------------------------------------------------------------------------


def plan(mode: str, tokens: int, delay_ms: float, max_streams: int = 256, burst: bool = False) -> list[dict[str, Any]]:
    """The phases each target runs, in order. Latency phases use an instant upstream (delay 0), so
    the added time is all path; throughput phases use `delay_ms` per token and measure a window of
    `duration_s` in steady state (see bench/load.py)."""

    def ns(c: int, rounds: int, warmup: int, tok: int = tokens) -> dict[str, Any]:
        return {
            "name": f"nonstream_c{c}",
            "type": "nonstream",
            "concurrency": c,
            "rounds": rounds,
            "warmup_rounds": warmup,
            "tokens": tok,
            "delay_ms": 0,
        }

    def st(name: str, c: int, duration: float, warmup: float, delay: float, tok: int = tokens) -> dict[str, Any]:
        return {
            "name": name,
            "type": "stream",
            "concurrency": c,
            "duration_s": duration,
            "warmup_s": warmup,
            "tokens": tok,
            "delay_ms": delay,
            "stagger": not burst,
        }

    if mode == "smoke":
        return [
            ns(1, 5, 1, 8),
            ns(4, 2, 0, 8),
            st("ttft_c1", 1, 0.3, 0.1, 0, 8),
            st("stream_c1", 1, 0.3, 0.1, 2, 8),
            st("stream_c4", 4, 0.3, 0.1, 2, 8),
            st("stream_c8", 8, 0.3, 0.1, 2, 8),
        ]
    if mode == "quick":
        return [
            ns(1, 200, 20),
            ns(64, 5, 1),
            st("ttft_c1", 1, 1.5, 0.3, 0),
            st("stream_c1", 1, 2.0, 0.3, delay_ms),
            st("stream_c64", 64, 2.5, 0.5, delay_ms),
            st(f"stream_c{max_streams}", max_streams, 4.0, 1.0, delay_ms),
        ]
    return [
        ns(1, 600, 30),
        ns(64, 20, 1),
        st("ttft_c1", 1, 4.0, 0.5, 0),
        st("stream_c1", 1, 4.0, 0.5, delay_ms),
        st("stream_c64", 64, 6.0, 1.0, delay_ms),
        st(f"stream_c{max_streams}", max_streams, 10.0, 1.5, delay_ms),
    ]


# ---- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or url} exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what or url} did not answer within {timeout:.0f} s")


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if int(raw[raw.rindex(b")") + 2 :].split()[1]) == pid:
            out.append(int(entry))
    return out


class Stack(contextlib.ExitStack):
    """Starts processes and stops them (by their own pid) however the run ends."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = workdir

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")
        self.callback(log.close)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd or ROOT)
        self.callback(stop, proc)
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=8)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    return env


class OtlpSink:
    """A local OTLP/HTTP endpoint for `gateway-traced`: takes each export and answers 200, in a thread
    of this orchestrator (whose CPU is not counted), so the gateway pays for making and exporting its
    spans and nothing for a collector."""

    def __init__(self) -> None:
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.exports += 1
                sink.bytes += len(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.exports = 0
        self.bytes = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_upstream(stack: Stack, port: int) -> subprocess.Popen[bytes]:
    proc = stack.start("upstream", [PY, "-m", "bench.upstream", "--port", str(port)], env=base_env())
    wait_http(f"http://127.0.0.1:{port}/health", proc, what="the stand-in upstream")
    return proc


def start_gateway(
    stack: Stack,
    port: int,
    upstream: int,
    args: argparse.Namespace,
    name: str = "gateway",
    path: str | None = None,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = base_env()
    env.update(
        {
            "VLLM_BASE_URL": f"http://127.0.0.1:{upstream}",
            "VISION_OLLAMA_URL": f"http://127.0.0.1:{free_port()}",  # closed: vision is not measured
            "ADAPTER_LOG_LEVEL": args.gateway_log_level,
            "ADAPTER_WORKERS": str(workers),
            "LLM_TRACE_EXPORTER": "none",
            **(extra_env or {}),
        }
    )
    cwd = ROOT
    path = path or args.gateway_path
    if path:
        cwd = Path(path).resolve()
        env["PYTHONPATH"] = str(cwd)
    proc = stack.start(name, [PY, "-m", "adapter", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=cwd)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc, what=f"the gateway ({name})")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{stack.log_tail(name)}") from None
    deadline = time.monotonic() + 20
    while workers > 1 and len(children_of(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)  # every worker up, so each is in the CPU figures
    return proc


def start_minimal(stack: Stack, name: str, port: int, upstream: int) -> subprocess.Popen[bytes]:
    client = name.partition("-")[2] or "httpx"
    proc = stack.start(
        name,
        [
            PY,
            "-m",
            "bench.minimal",
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{upstream}",
            "--client",
            client,
        ],
        env=base_env(),
    )
    wait_http(f"http://127.0.0.1:{port}/", proc, what="the minimal translator")
    return proc


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream standin {{ server 127.0.0.1:{upstream}; keepalive 1024; keepalive_requests 100000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://standin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def start_nginx(stack: Stack, port: int, upstream: int, nginx: str) -> subprocess.Popen[bytes]:
    tmp = stack.workdir / "nginx"
    tmp.mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream=upstream))
    proc = stack.start("nginx", [nginx, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")])
    wait_http(f"http://127.0.0.1:{port}/health", proc, what="nginx")
    return proc


# ---- running a target -----------------------------------------------------------------------------


def run_load(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [PY, "-m", "bench.load", orjson.dumps(spec).decode()],
        capture_output=True,
        cwd=ROOT,
        env=base_env(),
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"load generator failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')[-3000:]}"
        )
    if proc.stderr.strip():
        sys.stderr.write(proc.stderr.decode(errors="replace")[-2000:])
    return orjson.loads(proc.stdout.splitlines()[-1])


# ---- figures --------------------------------------------------------------------------------------


def summarise(load: dict[str, Any]) -> dict[str, Any]:
    phases = load["phases"]
    nonstream = [p for p in phases if p["type"] == "nonstream"]
    streams = [p for p in phases if p["type"] == "stream" and p["delay_ms"] > 0]
    ttft = next((p for p in phases if p["name"].startswith("ttft")), None)
    top = max(streams, key=lambda p: p["concurrency"]) if streams else None
    out: dict[str, Any] = {
        "nonstream": [
            {
                "concurrency": p["concurrency"],
                "p50_ms": p["latency"]["p50_ms"],
                "p99_ms": p["latency"]["p99_ms"],
                "n": p["latency"]["n"],
                "errors": p["errors"],
                "incomplete": p["incomplete"],
                # What a whole answer costs the proxy: the gateway asks vLLM for a stream and folds it.
                "proxy_cpu_ms_per_request": round(p["cpu_s"]["proxy"] / p["requests"] * 1000, 4)
                if p["requests"] and "proxy" in p["cpu_s"]
                else None,
            }
            for p in nonstream
        ],
        "ttft": None
        if ttft is None
        else {
            "concurrency": ttft["concurrency"],
            "p50_ms": ttft["ttft"]["p50_ms"],
            "p99_ms": ttft["ttft"]["p99_ms"],
            "n": ttft["ttft"]["n"],
            "errors": ttft["errors"],
            "incomplete": ttft["incomplete"],
        },
        "stream": [
            {
                "concurrency": p["concurrency"],
                "chunks_per_s": p["chunks_per_s"],
                "chunks": p["chunks"],
                "errors": p["errors"],
                "incomplete": p["incomplete"],
                "ttft_p50_ms": p["ttft"]["p50_ms"],
                "ttft_p99_ms": p["ttft"]["p99_ms"],
                "wall_s": p["wall_s"],
            }
            for p in streams
        ],
        "errors": sum(p["errors"] for p in phases),
        "incomplete": sum(p["incomplete"] for p in phases),
    }
    if top is not None:
        per_1k = top["cpu_s_per_1k_chunks"]
        out["at_max_streams"] = {
            "concurrency": top["concurrency"],
            "proxy_cpu_s_per_1k_chunks": per_1k.get("proxy"),
            "upstream_cpu_s_per_1k_chunks": per_1k.get("upstream"),
            "loadgen_cpu_s_per_1k_chunks": round(top["loadgen_cpu_s"] / top["chunks"] * 1000, 5)
            if top["chunks"]
            else None,
            "proxy_peak_rss_mb": (top["memory"].get("proxy") or {}).get("hwm_mb"),
            "proxy_rss_mb": (top["memory"].get("proxy") or {}).get("rss_mb"),
        }
    return out


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one target -> one summary, best of N: the highest chunk rate, the lowest
    latency, CPU and memory (noise on a shared machine only ever makes a figure worse); errors and
    incomplete answers added up (every one counts)."""
    if len(summaries) == 1:
        return summaries[0]

    def combine(key: str, values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {k: combine(k, [v.get(k) for v in values]) for k in first}
        if isinstance(first, list):
            return [combine(key, list(items)) for items in zip(*values, strict=False)]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if not numbers or all(v == first for v in values):
            return first
        if key in ("errors", "incomplete", "chunks", "n"):
            return sum(numbers)
        return max(numbers) if key == "chunks_per_s" else min(numbers)

    merged = combine("", summaries)
    merged["runs"] = len(summaries)
    return merged


def compare(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    def added(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(b - a, 4)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if not a or b is None else round(b / a, 4)

    out: dict[str, Any] = {
        "added_nonstream_ms": [
            {
                "concurrency": o["concurrency"],
                "p50": added(b["p50_ms"], o["p50_ms"]),
                "p99": added(b["p99_ms"], o["p99_ms"]),
            }
            for b, o in zip(base["nonstream"], other["nonstream"], strict=False)
        ],
        "added_ttft_ms": None
        if not base["ttft"] or not other["ttft"]
        else {
            "p50": added(base["ttft"]["p50_ms"], other["ttft"]["p50_ms"]),
            "p99": added(base["ttft"]["p99_ms"], other["ttft"]["p99_ms"]),
        },
        "chunk_rate_ratio": [
            {"concurrency": o["concurrency"], "ratio": ratio(b["chunks_per_s"], o["chunks_per_s"])}
            for b, o in zip(base["stream"], other["stream"], strict=False)
        ],
    }
    return out


def verdict(summary: dict[str, Any], comparison: dict[str, Any], nginx: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gateway against the issue's targets (informative: never asserted by tests). The ratio to
    nginx's CPU per chunk needs an nginx row in the same run."""
    c1 = next((x for x in comparison["added_nonstream_ms"] if x["concurrency"] == 1), None)
    top = comparison["chunk_rate_ratio"][-1] if comparison["chunk_rate_ratio"] else None
    at = summary.get("at_max_streams") or {}
    cpu = at.get("proxy_cpu_s_per_1k_chunks")
    nginx_cpu = ((nginx or {}).get("at_max_streams") or {}).get("proxy_cpu_s_per_1k_chunks")
    checks = {
        "added_nonstream_p50_c1_ms": c1 and c1["p50"],
        "added_ttft_p50_ms": comparison["added_ttft_ms"] and comparison["added_ttft_ms"]["p50"],
        "chunk_rate_ratio_at_max": top and top["ratio"],
        "cpu_s_per_1k_chunks": cpu,
        "cpu_per_chunk_vs_nginx": round(cpu / nginx_cpu, 2) if cpu and nginx_cpu else None,
        "peak_rss_mb": at.get("proxy_peak_rss_mb"),
    }
    out = {}
    for key, value in checks.items():
        limit = TARGETS[key]
        ok = None if value is None else (value >= limit if key == "chunk_rate_ratio_at_max" else value <= limit)
        out[key] = {"value": value, "target": limit, "met": ok}
    out["zero_errors_whole_answers"] = {
        "value": summary["errors"] + summary["incomplete"],
        "target": 0,
        "met": summary["errors"] + summary["incomplete"] == 0,
    }
    return out


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    s = result["summary"]
    order = ["direct", "gateway", "gateway-traced", "nginx", "minimal"]
    names = [t for t in order if t in s] + sorted(t for t in s if t not in order)
    base = s.get("direct")
    rows: list[list[str]] = []

    def row(label: str, get: Any, kind: str, digits: int = 3) -> None:
        cells = [label]
        b = get(base) if base else None
        for name in names:
            v = get(s[name])
            cell = fmt(v, digits)
            if name != "direct" and v is not None and b is not None:
                if kind == "added":
                    cell += f" ({v - b:+.3f})"
                elif kind == "ratio" and b:
                    cell += f" ({v / b:.3f}x)"
            cells.append(cell)
        rows.append(cells)

    def ns(c: int, key: str) -> Any:
        return lambda t: next((x[key] for x in t["nonstream"] if x["concurrency"] == c), None)

    def st(c: int, key: str) -> Any:
        return lambda t: next((x[key] for x in t["stream"] if x["concurrency"] == c), None)

    for c in sorted({x["concurrency"] for x in (base or s[names[0]])["nonstream"]}):
        row(f"non-stream latency c={c} p50 ms", ns(c, "p50_ms"), "added")
        row(f"non-stream latency c={c} p99 ms", ns(c, "p99_ms"), "added")
        row(f"non-stream proxy CPU ms per request c={c}", ns(c, "proxy_cpu_ms_per_request"), "", 4)
    row("time to first chunk c=1 p50 ms", lambda t: t["ttft"] and t["ttft"]["p50_ms"], "added")
    row("time to first chunk c=1 p99 ms", lambda t: t["ttft"] and t["ttft"]["p99_ms"], "added")
    for c in sorted({x["concurrency"] for x in (base or s[names[0]])["stream"]}):
        row(f"chunks/s at {c} streams", st(c, "chunks_per_s"), "ratio", 1)
    top = max((x["concurrency"] for x in (base or s[names[0]])["stream"]), default=None)
    if top:
        row(f"first chunk at {top} streams p50 ms", st(top, "ttft_p50_ms"), "added")
        row(f"first chunk at {top} streams p99 ms", st(top, "ttft_p99_ms"), "added")
    row("errors + incomplete answers", lambda t: t["errors"] + t["incomplete"], "", 0)
    row(
        f"proxy CPU s per 1k chunks ({top} streams)",
        lambda t: t.get("at_max_streams", {}).get("proxy_cpu_s_per_1k_chunks"),
        "",
        4,
    )
    row("proxy peak RSS MB", lambda t: t.get("at_max_streams", {}).get("proxy_peak_rss_mb"), "", 1)
    row(
        f"upstream CPU s per 1k chunks ({top} streams)",
        lambda t: t.get("at_max_streams", {}).get("upstream_cpu_s_per_1k_chunks"),
        "",
        4,
    )
    row(
        f"load gen CPU s per 1k chunks ({top} streams)",
        lambda t: t.get("at_max_streams", {}).get("loadgen_cpu_s_per_1k_chunks"),
        "",
        4,
    )

    header = ["metric", *names]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    text = "\n".join(lines)
    text += "\n\n(+x) = milliseconds added over direct; (x) = share of the direct chunk rate."
    v = result.get("verdict")
    if v:
        text += "\n\nGateway against the issue's targets:\n"
        for key, item in v.items():
            mark = "met" if item["met"] else ("n/a" if item["met"] is None else "MISSED")
            text += f"  {key:<28} {fmt(item['value'], 4):>10}  (target {item['target']})  {mark}\n"
    return text


# ---- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="under a minute: direct + gateway, fewer rounds")
    mode.add_argument("--smoke", action="store_true", help="a few requests, for the test suite")
    p.add_argument(
        "--targets",
        help="comma list of direct,gateway,nginx,minimal (default: all available; quick: "
        "direct,gateway); gateway-traced runs the gateway with tracing on (LLM_TRACE_EXPORTER=otlp, to a "
        "local sink); gateway-workersN runs the gateway with ADAPTER_WORKERS=N; "
        "minimal-httpx2, minimal-aiohttp, minimal-raw run the minimal translator on another "
        "upstream client",
    )
    p.add_argument(
        "--phases", help="comma list of phase names to run (default: all), e.g. nonstream_c1,ttft_c1,stream_c256"
    )
    p.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    p.add_argument("--delay-ms", type=float, default=20.0, help="per-token delay in the streaming phases (default 20)")
    p.add_argument("--max-streams", type=int, default=256, help="the top streaming concurrency (default 256)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every target N times, interleaved (A B A B ...), and report the best of N (the machine is noisy)",
    )
    p.add_argument(
        "--report", type=Path, metavar="JSON", help="print the table of a saved run (recomputing its summary) and exit"
    )
    p.add_argument(
        "--burst",
        action="store_true",
        help="start all streams of a phase at once (every round a burst of N requests) instead of staggered",
    )
    p.add_argument("--out", type=Path, help="JSON output (default bench/results/latest.json)")
    p.add_argument(
        "--profile",
        nargs="?",
        const="gateway",
        metavar="TARGET",
        help="run py-spy on TARGET (default: the gateway; or minimal..., gateway-VARIANT) during the top "
        "streaming phase only",
    )
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--gateway-path", help="run `python -m adapter` from this directory (a modified copy)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also run the gateway from DIR (a modified copy) as target gateway-NAME; repeatable",
    )
    p.add_argument("--gateway-log-level", default="warning", help="ADAPTER_LOG_LEVEL for the gateway (default warning)")
    p.add_argument(
        "--nginx",
        default=shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None),
        help="nginx binary (default: found on PATH)",
    )
    return p.parse_args(argv)


def finish(result: dict[str, Any]) -> None:
    """Summary, comparison with direct and the verdict, from the raw per-run figures."""
    result["summary"] = {name: merge([summarise(load) for load in loads]) for name, loads in result["targets"].items()}
    result.pop("comparison", None)
    result.pop("verdict", None)
    if "direct" in result["summary"]:
        base = result["summary"]["direct"]
        result["comparison"] = {n: compare(base, s) for n, s in result["summary"].items() if n != "direct"}
        if "gateway" in result["comparison"]:
            summary = result["summary"]
            result["verdict"] = verdict(summary["gateway"], result["comparison"]["gateway"], summary.get("nginx"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        result = orjson.loads(args.report.read_bytes())
        finish(result)
        print(table(result))
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    phases = plan(mode, args.tokens, args.delay_ms, args.max_streams, args.burst)
    if args.phases:
        wanted = {x.strip() for x in args.phases.split(",")}
        phases = [p for p in phases if p["name"] in wanted]
        if not phases:
            sys.exit(f"no phase named {args.phases!r}")
    variants = {}
    for item in args.variant:
        vname, _, vpath = item.partition("=")
        if not vpath:
            sys.exit(f"--variant wants NAME=DIR, got {item!r}")
        variants[f"gateway-{vname}"] = vpath
    if args.targets:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    elif args.profile:
        targets = [args.profile]
        variants = {k: v for k, v in variants.items() if k == args.profile}
    elif mode == "full":
        targets = ["direct", "gateway", "gateway-traced", *(["nginx"] if args.nginx else []), "minimal-aiohttp"]
    else:
        targets = ["direct", "gateway"]
    targets += [v for v in variants if v not in targets]
    import importlib.util

    for t in [t for t in targets if t == "minimal-aiohttp" and importlib.util.find_spec("aiohttp") is None]:
        print("aiohttp not installed: skipping the minimal-aiohttp row", file=sys.stderr)
        targets.remove(t)
    if "nginx" in targets and not args.nginx:
        print("nginx not installed: skipping the nginx row", file=sys.stderr)
        targets.remove("nginx")
    if args.profile:
        top = phases[-1]
        phases = [top]
        if not shutil.which("py-spy", path=os.pathsep.join([str(Path(PY).parent), os.environ.get("PATH", "")])):
            sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out_path = args.out or RESULTS / ("profile.json" if args.profile else "latest.json")
    started = time.time()
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "version": 1,
        "mode": mode,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
        },
        "config": {
            "tokens": args.tokens,
            "delay_ms": args.delay_ms,
            "targets": targets,
            "phases": phases,
            "repeat": args.repeat,
            "stagger": not args.burst,
            "gateway_log_level": args.gateway_log_level,
            "gateway_path": args.gateway_path,
        },
        "targets": {},
    }
    sink = OtlpSink() if "gateway-traced" in targets else None
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, Stack(Path(tmp)) as stack:
        up_port = free_port()
        upstream = start_upstream(stack, up_port)
        up_url = f"http://127.0.0.1:{up_port}"
        for rep, name in [(r, t) for r in range(args.repeat) for t in targets]:
            watch: dict[str, list[int]] = {"upstream": [upstream.pid]}
            proxy = None
            if name == "direct":
                url, kind = up_url, "openai"
            elif name in ("gateway", "gateway-traced") or name in variants or name.startswith("gateway-workers"):
                # gateway-workersN: the gateway with ADAPTER_WORKERS=N (CPU of all its processes).
                workers = int(name.removeprefix("gateway-workers") or 1) if name.startswith("gateway-workers") else 1
                traced = None
                if name == "gateway-traced" and sink is not None:
                    traced = {"LLM_TRACE_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url}
                port = free_port()
                proxy = start_gateway(stack, port, up_port, args, name, variants.get(name), workers, traced)
                url, kind = f"http://127.0.0.1:{port}", "ollama"
                watch["proxy"] = [proxy.pid, *children_of(proxy.pid)]
            elif name.startswith("minimal"):
                port = free_port()
                proxy = start_minimal(stack, name, port, up_port)
                url, kind = f"http://127.0.0.1:{port}", "ollama"
                watch["proxy"] = [proxy.pid]
            elif name == "nginx":
                port = free_port()
                proxy = start_nginx(stack, port, up_port, args.nginx)
                url, kind = f"http://127.0.0.1:{port}", "openai"
                watch["proxy"] = [proxy.pid, *children_of(proxy.pid)]
            else:
                sys.exit(f"unknown target {name!r}")
            spec: dict[str, Any] = {"kind": kind, "url": url, "upstream": up_url, "watch": watch, "phases": phases}
            if args.profile and name == args.profile:
                RESULTS.mkdir(parents=True, exist_ok=True)
                raw = RESULTS / f"profile-{name}.txt"
                spy = str(Path(PY).parent / "py-spy") if (Path(PY).parent / "py-spy").exists() else "py-spy"
                spec["phases"] = [
                    {
                        **phases[-1],
                        "profile_cmd": [
                            spy,
                            "record",
                            "--pid",
                            "{pid}",
                            "--rate",
                            str(args.profile_rate),
                            "--gil",
                            "--format",
                            "raw",
                            "--output",
                            str(raw),
                        ],
                    }
                ]
                result["profile"] = {"raw": str(raw.relative_to(ROOT)), "rate": args.profile_rate}
            label = f"{name} (run {rep + 1}/{args.repeat})" if args.repeat > 1 else name
            print(f"[bench] {label}: {', '.join(p['name'] for p in phases)} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                result["targets"].setdefault(name, []).append(run_load(spec, timeout=600))
            except RuntimeError as exc:
                tail = stack.log_tail(name) if proxy else ""
                raise SystemExit(f"{name}: {exc}\n{tail}") from None
            print(f"[bench] {label}: done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
            if proxy is not None:
                stop(proxy)
    if sink is not None:
        sink.close()
        result["otlp_sink"] = {"exports": sink.exports, "bytes": sink.bytes}
    result["duration_s"] = round(time.time() - started, 1)
    result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    finish(result)
    if args.profile:
        from bench.profile_report import report

        raw_path = ROOT / result["profile"]["raw"]
        if raw_path.exists():
            result["profile"]["top"] = report(raw_path, limit=25)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(table(result) if result.get("summary") else "")
    if args.profile and result["profile"].get("top"):
        from bench.profile_report import format_report

        text = format_report(result["profile"]["top"])
        (RESULTS / f"profile-{args.profile}.report").write_text(text.lstrip() + "\n")
        print(text)
    print(f"\nfigures: {out_path}  ({result['duration_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
