"""The fault corpus: every upstream misbehaviour of README "Failure behaviour", on every API family.

Each case sends one request through an in-process gateway whose upstreams are tests/standins/faulty.py
(a raw socket server that can FIN, RST, stall, trickle or talk garbage) and asserts what the table
says the client sees: the status and error body in the family's dialect before the first byte, or a
200 stream ending in one error line/event and never `done: true` after it began. Every case also
asserts that nothing hangs (client timeouts a little above the gateway's total, elapsed bounds where
the table names a timeout), that a delivered request was not sent twice, that both upstream slots are
free afterwards (/metrics gauges), that nothing was logged as an unhandled error, and that the
gateway still answers `/` and a normal request.

Timeouts are small (first token 0.3 s, total 1.0 s) so the file runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings, running_gateway
from tests.standins.faulty import (
    TOKENS,
    ErrorBody,
    Fault,
    FaultKind,
    FaultyUpstream,
    Received,
    error_body,
    error_message,
    iter_sse_data,
)
from tests.standins.server import dead_port

FIRST_TOKEN = 0.3
TOTAL = 1.0
CONNECT = 0.25  # tried twice: 2 x 0.25 stays well inside the total
CLIENT_TIMEOUT = TOTAL + 2.0  # a little above the gateway's total: a hang fails the test, never blocks it
# Elapsed bounds for answers the table ties to a timeout: not before it, and not long after it.
EARLY = 0.05
LATE = 0.6

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
MESSAGES = [{"role": "user", "content": "hi"}]
BUSY = "server busy, please try again.  maximum pending requests exceeded"

Api = Literal["api", "v1", "vision"]
Dialect = Literal["ollama", "openai", "anthropic"]


# ---- the API families ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One way into the gateway: the column of the table it belongs to, the dialect its errors are
    in, and which upstream (and path there) serves it."""

    id: str
    api: Api
    path: str
    upstream: Literal["vllm", "vision"]
    upstream_path: str
    dialect: Dialect
    streams: tuple[bool, ...]
    build: Callable[[bool], dict[str, Any]]

    @property
    def name(self) -> str:
        return "vLLM" if self.upstream == "vllm" else "Ollama Vision"

    def streamed(self, stream: bool) -> bool:
        """Whether the answer is a stream for the table's purposes: /api asks vLLM for a stream
        always, but the client's choice decides what it sees; elsewhere the upstream's answer is
        relayed, and embeddings are never a stream."""
        if self.upstream_path in ("/api/embed", "/v1/embeddings"):
            return False
        return stream

    def ndjson(self) -> bool:
        return self.dialect == "ollama"


API_CHAT = Family(
    "api_chat",
    "api",
    "/api/chat",
    "vllm",
    "/v1/chat/completions",
    "ollama",
    (True, False),
    lambda s: {"model": "m", "messages": MESSAGES, "stream": s},
)
API_GENERATE = Family(
    "api_generate",
    "api",
    "/api/generate",
    "vllm",
    "/v1/chat/completions",
    "ollama",
    (True, False),
    lambda s: {"model": "m", "prompt": "hi", "stream": s},
)
V1_CHAT = Family(
    "v1_chat",
    "v1",
    "/v1/chat/completions",
    "vllm",
    "/v1/chat/completions",
    "openai",
    (True, False),
    lambda s: {"model": "m", "messages": MESSAGES, "stream": s},
)
V1_MESSAGES = Family(
    "v1_messages",
    "v1",
    "/v1/messages",
    "vllm",
    "/v1/messages",
    "anthropic",
    (True, False),
    lambda s: {"model": "m", "max_tokens": 16, "messages": MESSAGES, "stream": s},
)
VISION_CHAT = Family(
    "vision_chat",
    "vision",
    "/api/chat",
    "vision",
    "/api/chat",
    "ollama",
    (True, False),
    lambda s: {"model": "v", "messages": MESSAGES, "stream": s},
)
VISION_IMAGES = Family(
    "vision_images",
    "vision",
    "/api/chat",
    "vision",
    "/api/chat",
    "ollama",
    (True, False),
    lambda s: {"model": "m", "messages": [{"role": "user", "content": "what is this?", "images": [PNG]}], "stream": s},
)
VISION_EMBED = Family(
    "vision_embed",
    "vision",
    "/api/embed",
    "vision",
    "/api/embed",
    "ollama",
    (False,),
    lambda s: {"model": "v", "input": "hi"},
)
# /v1 for a model only Ollama Vision serves: Ollama Vision's timeouts, OpenAI's error shape.
V1_VISION = Family(
    "v1_vision",
    "vision",
    "/v1/chat/completions",
    "vision",
    "/v1/chat/completions",
    "openai",
    (True, False),
    lambda s: {"model": "v", "messages": MESSAGES, "stream": s},
)

ALL = (API_CHAT, API_GENERATE, V1_CHAT, V1_MESSAGES, VISION_CHAT, VISION_IMAGES, VISION_EMBED, V1_VISION)
# The cases bounded by a timeout cost a second each; the families whose timing path is the same as
# another's (/api/generate is /api/chat's, images and /v1 on Ollama Vision are its relay) skip them.
TIMED = (API_CHAT, V1_CHAT, V1_MESSAGES, VISION_CHAT, VISION_EMBED)
VLLM_FAMILIES = (API_CHAT, API_GENERATE, V1_CHAT, V1_MESSAGES)


# ---- the fault cases ----------------------------------------------------------------------------

Setup = Literal["default", "fresh", "pooled", "stale", "stale_all"]


@dataclass(frozen=True)
class Case:
    id: str
    fault: Fault
    setup: Setup = "default"  # which connection the faulty request goes out on


CASES_ALL = [
    Case("ok", Fault("ok")),
    # The request reaches the upstream on a connection of its own (nothing pooled).
    Case("close_before_headers-fresh", Fault("close_before_headers"), "fresh"),
    Case("reset_before_headers-fresh", Fault("reset_before_headers"), "fresh"),
    Case("stale_keepalive-rst", Fault("stale_keepalive", close="rst"), "stale"),
    Case("stale_keepalive-fin", Fault("stale_keepalive", close="fin"), "stale"),
    Case("garbage_200", Fault("garbage_200")),
    Case("malformed_event", Fault("malformed_event")),
    Case("no_data_lines", Fault("no_data_lines")),
    Case("truncated", Fault("truncated")),
    Case("die_mid_body", Fault("die_mid_body")),
]
CASES_TIMED = [
    Case("stall_before_headers", Fault("stall_before_headers")),
    Case("stall_mid_stream", Fault("stall_mid_stream")),
    Case("trickle", Fault("trickle", interval=0.1)),
    # Longer than the first-token timeout in all (a whole /v1 answer is bounded by the total only).
    Case("slow_ok", Fault("slow_ok", slow=0.5)),
]


def _matrix() -> list[Any]:
    params = []
    for case in CASES_ALL:
        for fam in ALL:
            for stream in fam.streams:
                params.append(pytest.param(case, fam, stream, id=f"{case.id}-{fam.id}-{_s(stream)}"))
    # vLLM's own in-stream error event (Ollama Vision's equivalent is an NDJSON line, relayed).
    for fam in VLLM_FAMILIES:
        for stream in fam.streams:
            case = Case("error_event", Fault("error_event"))
            params.append(pytest.param(case, fam, stream, id=f"{case.id}-{fam.id}-{_s(stream)}"))
    # Every pooled connection stale at once (a NAT or load balancer dropped them all while idle).
    for fam in (API_CHAT, V1_CHAT, VISION_CHAT):
        case = Case("stale_keepalive-all_pooled", Fault("stale_keepalive", stale="all"), "stale_all")
        params.append(pytest.param(case, fam, False, id=f"{case.id}-{fam.id}-whole"))
    # The request reaches the upstream on a pooled keep-alive connection, which reads it whole and
    # then closes or resets it. On the wire that is what a stale connection looks like too (the
    # `stale_keepalive` cases above): the README's table says the pooled case is sent again once, on a
    # fresh connection. One family per column: the transport is shared.
    for kind in ("close_before_headers", "reset_before_headers"):
        case = Case(f"{kind}-pooled", Fault(kind), "pooled")
        for fam, stream in ((API_CHAT, False), (V1_CHAT, True), (VISION_CHAT, False)):
            params.append(pytest.param(case, fam, stream, id=f"{case.id}-{fam.id}-{_s(stream)}"))
    return params


def _timed_matrix() -> list[tuple[Case, Family, bool, str]]:
    return [
        (case, fam, stream, f"{case.id}-{fam.id}-{_s(stream)}")
        for case in CASES_TIMED
        for fam in TIMED
        for stream in fam.streams
    ]


def _s(stream: bool) -> str:
    return "stream" if stream else "whole"


# ---- what the table says ------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    kind: Literal["ok", "status", "stream_error", "relayed"]
    status: int = 200
    message: str = ""
    match: Literal["exact", "prefix", "contains"] = "exact"
    at: Literal["first_token", "total"] | None = None  # the timeout the answer must come at
    retry_after: str | None = None


def total_message(name: str) -> str:
    return f"{name} timed out (total time limit of {TOTAL:g} s reached)"


def expect(fault: Fault, fam: Family, stream: bool) -> Expect:
    name = fam.name
    streamed = fam.streamed(stream)
    kind = fault.kind
    if kind in ("ok", "slow_ok", "stale_keepalive"):
        return Expect("ok")
    if kind in ("close_before_headers", "reset_before_headers"):
        return Expect("status", 502, f"{name} failed: connection lost before any answer (", "prefix")
    if kind == "status":
        return expect_status(fam, fault.status, fault.body, fault.retry_after)
    if kind in ("garbage_200", "malformed_event", "no_data_lines", "truncated", "error_event"):
        if fam.api != "api":
            return Expect("relayed")  # "relayed as it came"
        if kind == "malformed_event":
            message, match = "vLLM failed: malformed stream event", "prefix"
        elif kind == "error_event":
            # vLLM's message, named as vLLM's: a 5xx "always names the upstream", and so does the line.
            message, match = "vLLM error: engine failure", "exact"
        else:
            message, match = "vLLM failed: the answer ended before it was complete", "exact"
        return Expect("stream_error" if streamed else "status", 502, message, match)
    if kind == "die_mid_body":
        message = f"{name} failed: connection lost in the middle of the answer ("
        return Expect("stream_error" if streamed else "status", 502, message, "prefix")
    if kind == "stall_before_headers":
        if fam.api == "api" or (fam.api == "v1" and streamed):
            return Expect("status", 504, f"{name} timed out (no response in time)", at="first_token")
        return Expect("status", 504, total_message(name), at="total")
    if kind == "stall_mid_stream":
        if fam.api == "vision" or (fam.api == "v1" and not streamed):
            return Expect("stream_error" if streamed else "status", 504, total_message(name), at="total")
        message = f"{name} timed out (no data for {FIRST_TOKEN:g} s)"
        return Expect("stream_error" if streamed else "status", 504, message, at="first_token")
    if kind == "trickle":
        return Expect("stream_error" if streamed else "status", 504, total_message(name), at="total")
    raise AssertionError(kind)


def expect_status(fam: Family, status: int, body: ErrorBody, retry_after: str | None) -> Expect:
    """`answers 4xx`: the same status and the upstream's message; `5xx`: 502 `<upstream> error (500):
    …`, except 503 and 504, kept. Messages are cut at 2,000 characters, read from at most 64 KiB."""
    if body == "empty":
        upstream_message = f"HTTP {status}"
    elif body == "text":
        upstream_message = f"plain text failure {status}"
    elif body == "huge":
        # Not JSON any more once cut at 64 KiB: its text is passed on, cut at 2,000 characters.
        upstream_message = error_body("huge", status)[1][: 64 * 1024].decode()
    else:
        upstream_message = error_message(status)
    message = upstream_message[:2000]
    if status >= 500 or status in (401, 403):
        message = f"{fam.name} error ({status}): {message}"
    client_status = status if status < 500 or status in (503, 504) else 502
    return Expect("status", client_status, message, retry_after=retry_after)


# ---- the gateway and its upstreams --------------------------------------------------------------


@dataclass
class Env:
    url: str
    vllm: FaultyUpstream
    vision: FaultyUpstream
    http: httpx.Client

    def upstream(self, fam: Family) -> FaultyUpstream:
        return self.vllm if fam.upstream == "vllm" else self.vision


def fault_settings(vllm_url: str, vision_url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "adapter_first_token_timeout": FIRST_TOKEN,
        "adapter_total_timeout": TOTAL,
        "adapter_connect_timeout": CONNECT,
        # Probes and model listings only at start: background traffic stays out of the pooled
        # connections a case sets up.
        "adapter_health_interval": 60.0,
        "adapter_models_ttl": 60.0,
        "adapter_access_log": False,
    }
    values.update(overrides)
    return make_settings(vllm_url, vision_url, **values)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FaultyUpstream, FaultyUpstream]]:
    with FaultyUpstream() as vllm, FaultyUpstream() as vision:
        yield vllm, vision


@pytest.fixture(scope="module")
def module_gateway(upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> Iterator[str]:
    with running_gateway(fault_settings(upstreams[0].url, upstreams[1].url)) as url:
        yield url


@pytest.fixture
def env(module_gateway: str, upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> Iterator[Env]:
    vllm, vision = upstreams
    vllm.reset()
    vision.reset()
    with httpx.Client(base_url=module_gateway, timeout=CLIENT_TIMEOUT) as http:
        yield Env(module_gateway, vllm, vision, http)
    vllm.reset()
    vision.reset()


@pytest.fixture
def tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], None]]:
    """Checks that nothing was logged as an unhandled error with a traceback. uvicorn's loggers do
    not propagate to the root, so the capture handler is attached to them directly."""
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(caplog.handler)

    def check() -> None:
        bad = [
            f"{r.name}: {r.getMessage()}"
            for r in caplog.records
            if (r.levelno >= logging.ERROR and r.exc_info and r.name.split(".")[0] in ("adapter", "uvicorn"))
            or "unhandled error" in r.getMessage()
        ]
        assert bad == [], f"logged as unhandled errors: {bad}"

    try:
        yield check
    finally:
        uvicorn_error.removeHandler(caplog.handler)


# ---- helpers ------------------------------------------------------------------------------------


def gauges(http: httpx.Client) -> dict[str, float]:
    """The in-flight and queued gauges per backend (summed over any further labels, such as replicas)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name in ("ollama_adapter_inflight_requests", "ollama_adapter_queued_requests"):
            kind = family.name.split("_")[2]
            for sample in family.samples:
                key = f"{kind}:{sample.labels['backend']}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def assert_slots_released(http: httpx.Client, within: float = 3.0) -> None:
    zero = {"inflight:vllm": 0.0, "inflight:ollama": 0.0, "queued:vllm": 0.0, "queued:ollama": 0.0}
    deadline = time.monotonic() + within
    while (seen := gauges(http)) != zero and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == zero


def assert_recovered(env: Env, fam: Family) -> None:
    """Slots free, `/` answers, and a normal request of the same family is served."""
    env.vllm.fault = Fault()
    env.vision.fault = Fault()
    assert_slots_released(env.http)
    root = env.http.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    r = env.http.post(fam.path, json=fam.build(False))
    assert r.status_code == 200, r.text
    assert_slots_released(env.http)


def post(http: httpx.Client, fam: Family, stream: bool, **kw: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    r = http.post(fam.path, json=fam.build(stream), **kw)
    return r, time.monotonic() - start


def error_of(fam: Family, payload: Any) -> str:
    """The message of an error body in the family's dialect, asserting the dialect's exact shape."""
    if fam.dialect == "ollama":
        assert isinstance(payload, dict) and list(payload) == ["error"], payload
        assert isinstance(payload["error"], str)
        return payload["error"]
    if fam.dialect == "openai":
        assert isinstance(payload, dict) and list(payload) == ["error"], payload
        err = payload["error"]
        assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["type"], str) and err["type"]
        return err["message"]
    assert isinstance(payload, dict) and set(payload) == {"type", "error"} and payload["type"] == "error", payload
    err = payload["error"]
    assert isinstance(err, dict) and set(err) == {"type", "message"} and isinstance(err["type"], str), err
    return err["message"]


def assert_message(actual: str, exp: Expect) -> None:
    if exp.match == "exact":
        assert actual == exp.message
    elif exp.match == "prefix":
        assert actual.startswith(exp.message), actual
    else:
        assert exp.message in actual, actual


def assert_elapsed(elapsed: float, exp: Expect) -> None:
    if exp.at == "first_token":
        assert FIRST_TOKEN - EARLY <= elapsed <= FIRST_TOKEN + LATE, elapsed
        assert elapsed < TOTAL, elapsed
    elif exp.at == "total":
        assert TOTAL - EARLY <= elapsed <= TOTAL + LATE, elapsed
    else:
        assert elapsed < TOTAL, elapsed  # no fault that the table answers at once may wait for a timeout


def sse_text(raw: bytes) -> str:
    """The generated text in vLLM's SSE (what /api must have passed on before an error)."""
    text = ""
    for payload in iter_sse_data(raw):
        if payload == b"[DONE]":
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        for choice in obj.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
    return text


def ndjson_lines(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n"), raw[-200:]
    return [orjson.loads(line) for line in raw.split(b"\n")[:-1]]


def check_ok(r: httpx.Response, fam: Family, stream: bool, sent: bytes) -> None:
    assert r.status_code == 200, r.text
    if fam.api != "api":
        assert r.content == sent  # passed through untouched
        return
    text_key = "message" if fam.path == "/api/chat" else "response"
    if stream:
        lines = ndjson_lines(r.content)
        assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
        parts = [line[text_key]["content"] if text_key == "message" else line[text_key] for line in lines]
        assert "".join(parts) == "".join(TOKENS)
        assert lines[-1]["done_reason"] == "stop"
    else:
        body = r.json()
        assert body["done"] is True and body["done_reason"] == "stop"
        text = body["message"]["content"] if text_key == "message" else body["response"]
        assert text == "".join(TOKENS)


def check_stream_error(r: httpx.Response, fam: Family, exp: Expect, sent: bytes, whole_prefix: bool) -> None:
    """200, what came before relayed or translated, then exactly one error line/event, never done."""
    assert r.status_code == 200, r.text
    if fam.api == "api":
        lines = ndjson_lines(r.content)
        assert_message(error_of(fam, lines[-1]), exp)
        before = lines[:-1]
        assert all(line.get("done") is False and "error" not in line for line in before), before
        key = "message" if fam.path == "/api/chat" else "response"
        text = "".join(line[key]["content"] if key == "message" else line[key] for line in before)
        upstream_text = sse_text(sent)
        if whole_prefix:
            assert upstream_text.startswith(text) and text, (text, upstream_text)
        else:
            assert text == upstream_text
        return
    if fam.ndjson():
        relayed, _, last = r.content[:-1].rpartition(b"\n")
        relayed = relayed + b"\n" if relayed else b""
        assert r.headers["content-type"] == "application/x-ndjson"
    else:
        at = r.content.rfind(b"data: ")
        relayed, last = r.content[:at], r.content[at:]
        assert last.startswith(b"data: ") and last.endswith(b"\n\n"), last
        last = last[6:-2]
        assert r.headers["content-type"].startswith("text/event-stream")
    assert_message(error_of(fam, orjson.loads(last)), exp)
    assert b'"done":true' not in relayed
    if whole_prefix:
        assert sent.startswith(relayed) and relayed, (relayed[-200:], sent[-200:])
    else:
        assert relayed == sent


def check_status(r: httpx.Response, fam: Family, exp: Expect) -> None:
    assert r.status_code == exp.status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert_message(error_of(fam, r.json()), exp)
    assert r.headers.get("retry-after") == exp.retry_after


# ---- setting up which connection the request goes out on ----------------------------------------


def warm_up(env: Env, fam: Family, concurrent: int = 1) -> None:
    """Normal requests of this family: they leave keep-alive connections in the gateway's pool."""
    results: list[int] = []

    def one() -> None:
        results.append(env.http.post(fam.path, json=fam.build(False)).status_code)

    threads = [threading.Thread(target=one) for _ in range(concurrent)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT)
    assert results == [200] * concurrent


def prepare(env: Env, case: Case, fam: Family) -> None:
    up = env.upstream(fam)
    if case.setup == "fresh":
        # No keep-alive at all: the gateway can hold no pooled connection the request could take.
        up.keep_alive = False
        up.drop_idle_connections()
    elif case.setup == "pooled":
        warm_up(env, fam)
    elif case.setup == "stale":
        up.drop_idle_connections()
    elif case.setup == "stale_all":
        up.drop_idle_connections()
        up.fault = Fault("slow_ok", slow=0.2)  # the two warm-ups overlap: two connections
        warm_up(env, fam, concurrent=2)
        assert up.idle_connections() >= 2, "two pooled connections were to be left idle"
    up.received.clear()
    up.fault = case.fault
    if case.setup == "stale":
        # The first request under the fault is answered normally and dooms its connection.
        warm_up(env, fam)
        up.received.clear()


# ---- the corpus ---------------------------------------------------------------------------------


def check_outcome(
    case: Case, fam: Family, stream: bool, r: httpx.Response, elapsed: float, received: list[Received], dropped: int
) -> None:
    """What the table says for this fault on this family, and that the request was sent once."""
    exp = expect(case.fault, fam, stream)
    received = [x for x in received if x.path == fam.upstream_path]
    sent = bytes(received[0].sent) if received else b""
    if exp.kind == "ok":
        check_ok(r, fam, stream, bytes(received[-1].sent) if received else b"")
    elif exp.kind == "relayed":
        assert r.status_code == 200, r.text
        assert r.content == sent  # "relayed as it came"
    elif exp.kind == "stream_error":
        check_stream_error(r, fam, exp, sent, whole_prefix=case.fault.kind == "trickle")
    else:
        check_status(r, fam, exp)
    if case.fault.kind == "slow_ok":
        assert case.fault.slow - EARLY <= elapsed <= TOTAL, elapsed  # the answer really took its time
    else:
        assert_elapsed(elapsed, exp)

    if case.setup == "pooled":
        # On a pooled connection, "read whole, then closed or reset without an answer" is on the wire
        # what a connection the upstream let go idle looks like, and the table's stale-connection row
        # wins: sent again once, on a connection of its own (which fails the same way here: 502).
        assert [x.reused for x in received] == [True, False], [(x.path, x.reused) for x in received]
    elif case.setup in ("stale", "stale_all"):
        # "sent again once on a fresh connection: the client sees nothing"
        assert dropped >= 1, "the request was to find its pooled connection dead"
        assert len(received) == 1 and not received[0].reused, [(x.path, x.reused) for x in received]
    else:
        # Delivered once, never sent again (a second send would be a second generation).
        assert len(received) == 1, [(x.path, x.reused) for x in received]


@pytest.mark.parametrize(("case", "fam", "stream"), _matrix())
def test_fault(case: Case, fam: Family, stream: bool, env: Env, tracebacks: Callable[[], None]) -> None:
    up = env.upstream(fam)
    prepare(env, case, fam)
    r, elapsed = post(env.http, fam, stream)
    check_outcome(case, fam, stream, r, elapsed, list(up.received), up.dropped)
    tracebacks()
    assert_recovered(env, fam)


@dataclass
class Outcome:
    response: httpx.Response
    elapsed: float
    received: list[Received]


@dataclass
class TimedBatch:
    outcomes: dict[str, Outcome | BaseException]
    logged: list[str]  # unhandled errors logged while the batch ran
    env: Env


@pytest.fixture(scope="module")
def timed_batch() -> Iterator[TimedBatch]:
    """The cases the table ties to a timeout cost about a second each: they run together, each
    request meeting its own fault (chosen by its X-Request-ID), on a gateway and upstreams of their own."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(logging.ERROR)
    loggers = [logging.getLogger("adapter"), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(keep)
    try:
        with FaultyUpstream() as vllm, FaultyUpstream() as vision:
            with running_gateway(fault_settings(vllm.url, vision.url)) as url:
                with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT) as http:
                    env = Env(url, vllm, vision, http)
                    matrix = _timed_matrix()
                    for case, fam, _stream, case_id in matrix:
                        env.upstream(fam).fault_for[case_id] = case.fault
                    # Discovery first, so no case waits for the model lists.
                    assert http.get("/api/tags").status_code == 200
                    results: dict[str, Outcome | BaseException] = {}

                    def run(case_id: str, fam: Family, stream: bool) -> None:
                        try:
                            with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT) as own:
                                r, elapsed = post(own, fam, stream, headers={"X-Request-ID": case_id})
                        except BaseException as exc:  # a client timeout: the gateway hung
                            results[case_id] = exc
                            return
                        up = env.upstream(fam)
                        results[case_id] = Outcome(r, elapsed, [x for x in up.received if x.request_id == case_id])

                    threads = [threading.Thread(target=run, args=(cid, fam, st)) for _, fam, st, cid in matrix]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join(CLIENT_TIMEOUT + 2)
                    vllm.fault_for.clear()
                    vision.fault_for.clear()
                    yield TimedBatch(results, [_unhandled(r) for r in records if _is_unhandled(r)], env)
    finally:
        for logger in loggers:
            logger.removeHandler(keep)


def _is_unhandled(record: logging.LogRecord) -> bool:
    return bool(record.exc_info) or "unhandled error" in record.getMessage()


def _unhandled(record: logging.LogRecord) -> str:
    return f"{record.name}: {record.getMessage()}"


@pytest.mark.parametrize(("case", "fam", "stream"), [pytest.param(c, f, s, id=i) for c, f, s, i in _timed_matrix()])
def test_timed_fault(case: Case, fam: Family, stream: bool, timed_batch: TimedBatch) -> None:
    outcome = timed_batch.outcomes[f"{case.id}-{fam.id}-{_s(stream)}"]
    assert isinstance(outcome, Outcome), repr(outcome)
    check_outcome(case, fam, stream, outcome.response, outcome.elapsed, outcome.received, 0)
    assert timed_batch.logged == []
    assert_recovered(timed_batch.env, fam)


STATUS_CODES = (400, 401, 403, 404, 422, 429, 500, 501, 502, 503, 504)
STATUS_FAMILIES = ((API_CHAT, True), (API_CHAT, False), (API_GENERATE, False), (V1_CHAT, True), (V1_CHAT, False))
STATUS_FAMILIES += ((V1_MESSAGES, False), (VISION_CHAT, True), (VISION_CHAT, False), (VISION_EMBED, False))
STATUS_FAMILIES += ((V1_VISION, False),)


def _status_matrix() -> list[Any]:
    params = []
    for fam, stream in STATUS_FAMILIES:
        native: ErrorBody = "nested" if fam.upstream == "vllm" else "ollama"
        for code in STATUS_CODES:
            params.append(pytest.param(fam, stream, code, native, None, id=f"{code}-{native}-{fam.id}-{_s(stream)}"))
    for fam in (API_CHAT, V1_CHAT, V1_MESSAGES, VISION_CHAT, VISION_EMBED):
        for body in ("nested", "legacy", "ollama", "empty", "text", "huge"):
            for code in (400, 500):
                params.append(pytest.param(fam, False, code, body, None, id=f"{code}-{body}-{fam.id}-whole"))
    for fam, stream in STATUS_FAMILIES:
        for code in (503, 429):
            params.append(
                pytest.param(fam, stream, code, "nested", "7", id=f"{code}-retry_after-{fam.id}-{_s(stream)}")
            )
    return params


@pytest.mark.parametrize(("fam", "stream", "code", "body", "retry_after"), _status_matrix())
def test_upstream_error_status(
    fam: Family,
    stream: bool,
    code: int,
    body: ErrorBody,
    retry_after: str | None,
    env: Env,
    tracebacks: Callable[[], None],
) -> None:
    """`answers 4xx` / `500, 501, 502 or another 5xx` / `503` / `504` rows, every body shape an
    upstream sends (vLLM's nested and legacy, Ollama's, empty, plain text, 4 MB)."""
    up = env.upstream(fam)
    up.fault = Fault("status", status=code, body=body, retry_after=retry_after)
    r, elapsed = post(env.http, fam, stream)
    # Retry-After: the table keeps 503's; a 429's is passed on with the rest of the 4xx.
    check_status(r, fam, expect(up.fault, fam, stream))
    assert elapsed < TOTAL
    assert up.count(fam.upstream_path) == 1  # a 4xx or 5xx is never retried
    tracebacks()
    assert_recovered(env, fam)


# ---- a pooled connection closed right after its answer ---------------------------------------------

ROUNDS = 600
# Where the close lands relative to the next request decides whether that request meets it: spread.
CLOSE_DELAYS = [0.0002 * i for i in range(1, 16)]


# vLLM and Ollama Vision: every family shares its upstream's pool and retry.
@pytest.mark.parametrize("fam", [API_CHAT, VISION_CHAT], ids=lambda f: f.id)
def test_pooled_connection_closed_right_after_answer(fam: Family, env: Env, tracebacks: Callable[[], None]) -> None:
    """`closes or resets a pooled keep-alive connection it had let go idle`: the answer said
    keep-alive, then the socket closed a moment later (uvicorn does this after an app raised: vLLM's
    500s, Starlette's error answer). The next request may find the connection dead while it writes
    the body: the table says it is sent again on a fresh connection and the client sees nothing.
    The race is narrow (about 1 request in 50 meets it), so it is run many times; each request must
    reach the upstream exactly once."""
    up = env.upstream(fam)
    failures = []
    for i in range(ROUNDS):
        up.fault = Fault("close_after_answer", close_after=CLOSE_DELAYS[i % len(CLOSE_DELAYS)])
        r = env.http.post(fam.path, json=fam.build(False))
        if r.status_code != 200:
            failures.append(f"{r.status_code} {r.text[:200]}")
    assert failures == [], f"{len(failures)} of {ROUNDS} requests failed, e.g. {failures[0]}"
    assert up.count(fam.upstream_path) == ROUNDS
    tracebacks()
    assert_recovered(env, fam)


# ---- connecting fails -----------------------------------------------------------------------------

CATALOG = "discover: false\nmodels:\n  - name: m\n    backend: vllm\n  - name: v\n    backend: ollama\n"


class Unaccepting:
    """A port whose listen backlog is full: connecting to it times out instead of being refused."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", self.port))
            self.fillers.append(s)
        time.sleep(0.1)

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.listener.close()


@pytest.fixture(scope="module", params=["refused", "connect_timeout"])
def dead_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Both upstreams dead: nothing listens, or connecting times out. The catalog names the models,
    so routing needs no listing and the request itself meets the dead upstream."""
    catalog = tmp_path_factory.mktemp("catalog") / "models.yaml"
    catalog.write_text(CATALOG)
    dead = Unaccepting() if request.param == "connect_timeout" else None
    url = f"http://127.0.0.1:{dead.port if dead else dead_port()}"
    try:
        with running_gateway(fault_settings(url, url, adapter_models_file=catalog)) as gw:
            yield gw
    finally:
        if dead:
            dead.close()


@pytest.mark.parametrize(
    ("fam", "stream"),
    [
        (API_CHAT, True),
        (API_CHAT, False),
        (V1_CHAT, True),
        (V1_MESSAGES, False),
        (VISION_CHAT, True),
        (VISION_EMBED, False),
    ],
    ids=lambda v: v.id if isinstance(v, Family) else _s(v),
)
def test_cannot_connect(fam: Family, stream: bool, dead_gateway: str, tracebacks: Callable[[], None]) -> None:
    """`refuses the connection, or connecting times out`: 502 `vLLM is unavailable: …` (no catalog
    fallback here, chat mode), 502 on /v1, 502 `Ollama Vision is unavailable: …`."""
    with httpx.Client(base_url=dead_gateway, timeout=CLIENT_TIMEOUT) as http:
        r, elapsed = post(http, fam, stream)
        check_status(r, fam, Expect("status", 502, f"{fam.name} is unavailable: ", "prefix"))
        # Tried twice, each attempt bounded by the connect timeout: well inside the total.
        assert elapsed < TOTAL, elapsed
        assert_slots_released(http)
        assert http.get("/").text == "Ollama is running"
        tracebacks()


def test_ingestion_mode_without_fallback_is_503(tmp_path: Path) -> None:
    """`refuses the connection` row in ingestion mode: 503 on /api and /v1 alike, naming what failed."""
    catalog = tmp_path / "models.yaml"
    catalog.write_text(CATALOG)
    url = f"http://127.0.0.1:{dead_port()}"
    settings = fault_settings(url, url, adapter_models_file=catalog, adapter_mode="ingestion")
    with running_gateway(settings) as gw, httpx.Client(base_url=gw, timeout=CLIENT_TIMEOUT) as http:
        r, _ = post(http, API_CHAT, False)
        unavailable = "vLLM is unavailable (ingestion mode: no fallback): vLLM is unavailable: "
        check_status(r, API_CHAT, Expect("status", 503, unavailable, "prefix"))
        r, _ = post(http, V1_CHAT, False)
        check_status(r, V1_CHAT, Expect("status", 503, unavailable, "prefix"))
        assert_slots_released(http)


# ---- client disconnects ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patient_gateway(upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> Iterator[str]:
    """Timeouts far away: whatever closes the upstream connection here, it is not a timeout."""
    settings = fault_settings(
        upstreams[0].url, upstreams[1].url, adapter_first_token_timeout=30, adapter_total_timeout=60
    )
    with running_gateway(settings) as url:
        yield url


@pytest.mark.parametrize(
    ("fam", "stream"),
    [
        (API_CHAT, True),
        (API_CHAT, False),
        (API_GENERATE, True),
        (V1_CHAT, True),
        (V1_CHAT, False),
        (V1_MESSAGES, True),
        (V1_MESSAGES, False),
        (VISION_CHAT, True),
        (VISION_CHAT, False),
        (VISION_EMBED, False),
    ],
    ids=lambda v: v.id if isinstance(v, Family) else _s(v),
)
def test_client_disconnect_reaches_upstream(
    fam: Family,
    stream: bool,
    patient_gateway: str,
    upstreams: tuple[FaultyUpstream, FaultyUpstream],
    tracebacks: Callable[[], None],
) -> None:
    """ "A client that disconnects cancels the upstream request at once": streamed, the client
    leaves after the first bytes; whole, it gives up while the upstream has not answered."""
    vllm, vision = upstreams
    vllm.reset()
    vision.reset()
    up = vllm if fam.upstream == "vllm" else vision
    up.fault = Fault("stall_mid_stream" if stream else "stall_before_headers")
    with httpx.Client(base_url=patient_gateway, timeout=CLIENT_TIMEOUT) as http:
        if stream:
            with http.stream("POST", fam.path, json=fam.build(True)) as r:
                assert r.status_code == 200
                first = next(r.iter_raw())
                assert first
            # leaving the block with the body unread closes the connection
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post(fam.path, json=fam.build(False), timeout=0.3)
        gone = time.monotonic()
        record = _only(up.received, fam.upstream_path)
        closed = record.connection.gone.is_set
        deadline = gone + 2.0
        while not closed() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert record.connection.peer_closed_at is not None, "the upstream request was never closed"
        assert record.connection.peer_closed_at - gone < 0.5
        assert_slots_released(http)
        up.fault = Fault()
        assert http.post(fam.path, json=fam.build(False)).status_code == 200
        tracebacks()


def _only(received: list[Received], path: str) -> Received:
    matching = [x for x in list(received) if x.path == path]
    assert len(matching) == 1, [(x.path, x.reused) for x in received]
    return matching[0]


def test_gave_up_client_frees_the_only_slot(upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> None:
    """The issue's case: ADAPTER_MAX_INFLIGHT=1, a non-streamed /v1 client gives up after 1 s; the
    next request must be served, not refused as busy (a queue timeout of 2 s would show a leak)."""
    vllm, vision = upstreams
    vllm.reset()
    vision.reset()
    settings = fault_settings(
        vllm.url,
        vision.url,
        adapter_max_inflight=1,
        adapter_queue_timeout=2,
        adapter_first_token_timeout=30,
        adapter_total_timeout=60,
    )
    with running_gateway(settings) as gw, httpx.Client(base_url=gw, timeout=CLIENT_TIMEOUT + 3) as http:
        vllm.fault = Fault("stall_before_headers")
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=V1_CHAT.build(False), timeout=1.0)
        vllm.fault = Fault()
        r = http.post("/v1/chat/completions", json=V1_CHAT.build(False))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "".join(TOKENS)
        assert_slots_released(http)
    vllm.reset()


# ---- back-pressure --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_gateway(upstreams: tuple[FaultyUpstream, FaultyUpstream]) -> Iterator[str]:
    """One slot per backend and no queue."""
    settings = fault_settings(
        upstreams[0].url,
        upstreams[1].url,
        adapter_max_inflight=1,
        adapter_max_queue=0,
        adapter_first_token_timeout=30,
        adapter_total_timeout=60,
    )
    with running_gateway(settings) as url:
        yield url


@pytest.mark.parametrize(
    "fam", [API_CHAT, V1_CHAT, V1_MESSAGES, VISION_CHAT, VISION_EMBED, V1_VISION], ids=lambda f: f.id
)
def test_server_busy(
    fam: Family, busy_gateway: str, upstreams: tuple[FaultyUpstream, FaultyUpstream], tracebacks: Callable[[], None]
) -> None:
    """`is busy beyond ADAPTER_MAX_INFLIGHT + ADAPTER_MAX_QUEUE`: 503 `server busy…` with Retry-After,
    in the family's own shape, while one slow request holds the only slot of that backend."""
    vllm, vision = upstreams
    vllm.reset()
    vision.reset()
    up = vllm if fam.upstream == "vllm" else vision
    with httpx.Client(base_url=busy_gateway, timeout=CLIENT_TIMEOUT) as http:
        up.fault = Fault("stall_before_headers")
        holder_done = threading.Event()
        holder: list[BaseException] = []

        def hold() -> None:
            try:
                http.post(fam.path, json=fam.build(False), timeout=0.5)
            except BaseException as exc:  # the expected ReadTimeout, or whatever went wrong instead
                holder.append(exc)
            holder_done.set()

        threading.Thread(target=hold, daemon=True).start()
        deadline = time.monotonic() + 2
        while not up.received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert up.received, "the slow request never reached the upstream"
        r, elapsed = post(http, fam, False)
        check_status(r, fam, Expect("status", 503, BUSY, retry_after="1"))
        assert elapsed < 0.4
        assert up.count(fam.upstream_path) == 1  # refused at the gate, never sent
        assert holder_done.wait(CLIENT_TIMEOUT)
        assert [type(e) for e in holder] == [httpx.ReadTimeout]  # the slow one only gave up itself
        up.fault = Fault()
        assert_slots_released(http)
        r = http.post(fam.path, json=fam.build(False))
        assert r.status_code == 200, r.text
        tracebacks()
    vllm.reset()
    vision.reset()


# ---- logging ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fam", "stream", "kind"),
    [
        (V1_CHAT, True, "die_mid_body"),
        (V1_CHAT, False, "die_mid_body"),
        (V1_MESSAGES, True, "die_mid_body"),
        (VISION_CHAT, True, "die_mid_body"),
        (VISION_CHAT, False, "die_mid_body"),
        (VISION_EMBED, False, "die_mid_body"),
        (V1_VISION, True, "die_mid_body"),
        (V1_CHAT, True, "reset_before_headers"),
        (VISION_CHAT, True, "reset_before_headers"),
    ],
    ids=lambda v: v.id if isinstance(v, Family) else (_s(v) if isinstance(v, bool) else v),
)
def test_upstream_abort_is_not_an_unhandled_error(
    fam: Family,
    stream: bool,
    kind: FaultKind,
    env: Env,
    caplog: pytest.LogCaptureFixture,
    tracebacks: Callable[[], None],
) -> None:
    """An upstream that aborts in the middle of a /v1 or Vision body is the upstream's failure: a
    warning at most, never an ERROR with a traceback or "unhandled error"."""
    caplog.set_level(logging.DEBUG)
    env.upstream(fam).fault = Fault(kind)
    r, _ = post(env.http, fam, stream)
    assert r.status_code in (200, 502)
    tracebacks()
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR and rec.name.startswith("adapter")]
    assert errors == [], [rec.getMessage() for rec in errors]
    assert_recovered(env, fam)
