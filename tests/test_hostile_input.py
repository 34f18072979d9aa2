"""Hostile input, property-tested: every route of adapter/app.py, every method it declares, with bodies
no client should send.

Bodies are generated (hypothesis): wrong types for every known field, nesting up to ~2,000 levels,
numbers JSON cannot hold (1e400, 2**70, -0, NaN and Infinity tokens), invalid UTF-8, duplicate keys,
empty and whitespace bodies, top-level non-objects, form-encoded and random bytes, chunked bodies
without Content-Length, and bodies over ADAPTER_MAX_BODY_BYTES (64 KiB here). The upstreams are the
ordinary stand-ins, so a body that happens to be valid is served for real.

Properties: a success (2xx) or a 4xx whose body is JSON with an `error` (a string on Ollama's
endpoints; on /v1 an object in OpenAI's or Anthropic's shape); unknown routes and methods answer
Ollama's plain-text 404/405; never a 500; any other 5xx must name the upstream that failed (those
are counted apart); and the gateway still answers `/` afterwards.

Size: ADAPTER_HOSTILE_EXAMPLES examples per route, method and kind of body (default 6: about 1,400
bodies, a few seconds on 2 cores; 45 sends over 10,000). ADAPTER_HOSTILE_REPORT=<path> writes the
run's figures as JSON. Runs are derandomized and write no hypothesis database.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from prometheus_client.parser import text_string_to_metric_families

from adapter.app import routes
from tests.conftest import make_settings, running_gateway
from tests.standins.ollama import OllamaStandin
from tests.standins.server import ServerThread
from tests.standins.vllm import VLLMStandin

# Hypothesis keeps caches (and, unless told otherwise, a database) under ./.hypothesis: not in the repo.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "vllm-ollama-adapter-hypothesis"))

EXAMPLES = int(os.environ.get("ADAPTER_HOSTILE_EXAMPLES", "6"))
REPORT = os.environ.get("ADAPTER_HOSTILE_REPORT")
MAX_BODY = 64 * 1024
CLIENT_TIMEOUT = 15.0
UPSTREAM_NAMES = ("vLLM", "Ollama Vision")

HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ---- the routes table, as the app declares it ---------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # with `{digest}` still in it

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def openai_style(self) -> bool:
        return self.path.startswith("/v1/")


ENDPOINTS = [Endpoint(method, route.path) for route in routes() for method in sorted(route.methods or ())]


# ---- JSON text with what JSON libraries will not write --------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is (numbers beyond any float, NaN, invalid UTF-8, deep nesting)."""

    text: bytes


@dataclass(frozen=True)
class Pairs:
    """An object as a list of pairs: keys may repeat."""

    items: tuple[tuple[str, Any], ...]


def dump(value: Any) -> bytes:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return b"{" + b",".join(dump(k) + b":" + dump(v) for k, v in value.items) + b"}"
    if isinstance(value, dict):
        return dump(Pairs(tuple(value.items())))
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    # ensure_ascii: lone surrogates become \ud800 escapes, valid JSON text a strict parser may refuse
    return json.dumps(value).encode()


NUMBER_TOKENS = [
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"-0",
    b"-0.0",
    str(2**70).encode(),
    str(-(2**70)).encode(),
    str(2**64).encode(),
    b"9" * 400,
    b"NaN",
    b"-Infinity",
    b"Infinity",
    b"0x10",
    b"01",
    b"1.",
    b".5",
    b"+1",
]
NAN_LIKE_STRINGS = ["NaN", "nan", "Infinity", "-Infinity", "1e400", "-0", "0x1p3", "", " "]
BAD_UTF8 = [b'"\xff\xfe"', b'"\xc3\x28"', b'"\xed\xa0\x80"', b'"a\x00b"', b'"\xe2\x82"', b'"\x80"']
MODELS = ["tiny", "Qwen/Qwen2.5-7B-Instruct", "llava:7b", "nomic-embed-text", "llama2:7b", "no-such-model", ""]

# Fields each endpoint knows (adapter/schemas.py and Ollama's request fields): each gets right and
# wrong types.
COMMON = ["model", "name", "stream", "keep_alive", "options", "format", "think", "logprobs", "top_logprobs"]
FIELDS: dict[str, list[str]] = {
    "/api/chat": [*COMMON, "messages", "tools", "truncate", "shift"],
    "/api/generate": [*COMMON, "prompt", "suffix", "images", "system", "template", "context", "raw", "truncate"],
    "/api/show": ["model", "name", "verbose"],
    "/api/embed": ["model", "input", "truncate", "options", "keep_alive", "dimensions"],
    "/api/embeddings": ["model", "prompt", "options", "keep_alive"],
    "/api/pull": ["model", "name", "insecure", "stream"],
    "/api/push": ["model", "name", "insecure", "stream"],
    "/api/create": ["model", "name", "from", "files", "adapters", "template", "system", "parameters", "messages"],
    "/api/copy": ["source", "destination"],
    "/api/delete": ["model", "name"],
    "/v1/chat/completions": ["model", "messages", "stream", "tools", "max_tokens", "stream_options", "temperature"],
    "/v1/completions": ["model", "prompt", "stream", "suffix", "max_tokens", "stream_options"],
    "/v1/embeddings": ["model", "input", "dimensions", "encoding_format"],
    "/v1/responses": ["model", "input", "stream", "tools", "instructions"],
    "/v1/messages": ["model", "messages", "max_tokens", "stream", "system", "tools"],
    "/v1/messages/count_tokens": ["model", "messages", "system", "tools"],
}
OPTION_KEYS = [
    "num_predict",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "num_ctx",
    "num_gpu",
    "mirostat",
    "tfs_z",
]
MESSAGE_KEYS = ["role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"]


def deep(depth: int, kind: str) -> Raw:
    if kind == "array":
        return Raw(b"[" * depth + b"]" * depth)
    return Raw(b'{"a":' * depth + b"1" + b"}" * depth)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(NAN_LIKE_STRINGS),
    st.sampled_from(MODELS),
    st.sampled_from(NUMBER_TOKENS).map(Raw),
    st.sampled_from(BAD_UTF8).map(Raw),
)
deep_values = st.builds(deep, st.integers(min_value=100, max_value=2000), st.sampled_from(["array", "object"]))


def values(depth: int = 2) -> st.SearchStrategy[Any]:
    """Any JSON-ish value, a few levels deep; sometimes pathologically deep."""
    if depth == 0:
        return scalars
    inner = values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=4),
        st.lists(st.tuples(st.text(max_size=6), inner), max_size=4).map(lambda p: Pairs(tuple(p))),
        deep_values,
    )


def field_value(name: str) -> st.SearchStrategy[Any]:
    """A value for a known field: sometimes the right type with hostile content, often the wrong type."""
    anything = values(2)
    if name in ("model", "name", "source", "destination", "from"):
        return st.one_of(st.sampled_from(MODELS), anything)
    if name == "options":
        return st.one_of(st.dictionaries(st.sampled_from(OPTION_KEYS), values(1), max_size=5), anything)
    if name == "messages":
        message = st.dictionaries(st.sampled_from(MESSAGE_KEYS), values(1), max_size=4)
        valid_message = st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=20)})
        return st.one_of(st.lists(st.one_of(message, valid_message, anything), max_size=4), anything)
    if name in ("stream", "raw", "truncate", "shift", "logprobs", "insecure", "verbose"):
        return st.one_of(st.booleans(), anything)
    return anything


def object_body(path: str) -> st.SearchStrategy[Any]:
    """An object of the endpoint's known fields (some repeated), wrong-typed or hostile, plus strangers."""
    known = FIELDS.get(path, ["model", "name", "stream"])
    pair = st.one_of(
        st.sampled_from(known).flatmap(lambda k: st.tuples(st.just(k), field_value(k))),
        st.tuples(st.text(max_size=10), values(1)),
    )
    return st.lists(pair, max_size=8).map(lambda p: Pairs(tuple(p)))


@dataclass(frozen=True)
class Body:
    kind: str
    content: bytes
    content_type: str | None
    chunked: bool  # sent with Transfer-Encoding: chunked, no Content-Length


CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/octet-stream",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    None,
]


MESSAGES = [{"role": "user", "content": "hi"}]
# A valid body per endpoint: one hostile field in an otherwise good request reaches the deep code
# (routing, translation, the upstream call), where a bad body is refused at the door.
VALID: dict[str, dict[str, Any]] = {
    "/api/chat": {"model": "tiny", "messages": MESSAGES, "stream": False},
    "/api/generate": {"model": "tiny", "prompt": "hi", "stream": False},
    "/api/show": {"model": "tiny"},
    "/api/embed": {"model": "nomic-embed-text", "input": "hi"},
    "/api/embeddings": {"model": "nomic-embed-text", "prompt": "hi"},
    "/api/pull": {"model": "tiny", "stream": False},
    "/api/push": {"model": "llava:7b", "stream": False},
    "/api/create": {"model": "made", "from": "llava:7b", "stream": False},
    "/api/copy": {"source": "llava:7b", "destination": "llava-copy"},
    "/api/delete": {"model": "llava-copy"},
    "/v1/chat/completions": {"model": "tiny", "messages": MESSAGES},
    "/v1/completions": {"model": "tiny", "prompt": "hi"},
    "/v1/embeddings": {"model": "nomic-embed-text", "input": "hi"},
    "/v1/responses": {"model": "tiny", "input": "hi"},
    "/v1/messages": {"model": "tiny", "max_tokens": 8, "messages": MESSAGES},
    "/v1/messages/count_tokens": {"model": "tiny", "messages": MESSAGES},
}


def one_wrong_field(path: str) -> st.SearchStrategy[bytes]:
    """The endpoint's valid body with one known field given a hostile value, or taken away."""
    base = VALID.get(path, {"model": "tiny"})

    def mutate(name: str, value: Any, drop: bool) -> bytes:
        body = {k: v for k, v in base.items() if k != name}
        if not drop:
            body[name] = value
        return dump(body)

    known = st.sampled_from(FIELDS.get(path, ["model"]))
    return known.flatmap(lambda k: st.builds(mutate, st.just(k), field_value(k), st.booleans()))


def duplicate_keys(path: str) -> st.SearchStrategy[bytes]:
    base = VALID.get(path, {"model": "tiny"})
    return st.builds(
        lambda key, value, first: dump(
            Pairs(
                ((key, value), *base.items()) if first else (*base.items(), (key, value)),
            )
        ),
        st.sampled_from(sorted(base)),
        values(1),
        st.booleans(),
    )


TINY = [b"", b" ", b"\n", b"\t\r\n ", b"\x00", b"null", b"{}", b"[]", b'""', b"{", b"}", b"\xef\xbb\xbf{}"]


def kinds(path: str) -> dict[str, st.SearchStrategy[bytes]]:
    return {
        "object": object_body(path).map(dump),
        "one_wrong_field": one_wrong_field(path),
        "duplicate_keys": duplicate_keys(path),
        "deep": deep_values.map(dump),
        "deep_field": st.tuples(st.sampled_from(FIELDS.get(path, ["model"])), deep_values).map(
            lambda kv: dump({**VALID.get(path, {}), kv[0]: kv[1]})
        ),
        "huge_numbers": st.tuples(st.sampled_from(FIELDS.get(path, ["model"])), st.sampled_from(NUMBER_TOKENS)).map(
            lambda kv: dump({**VALID.get(path, {}), kv[0]: Raw(kv[1])})
        ),
        "non_object": values(2).filter(lambda v: not isinstance(v, dict | Pairs)).map(dump),
        "empty_or_tiny": st.sampled_from(TINY),
        "invalid_utf8": st.tuples(st.sampled_from(FIELDS.get(path, ["model"])), st.sampled_from(BAD_UTF8)).map(
            lambda kv: dump({**VALID.get(path, {}), kv[0]: Raw(kv[1])})
        ),
        "random_bytes": st.binary(max_size=300),
        "form": st.dictionaries(st.sampled_from(FIELDS.get(path, ["model"])), st.text(max_size=8), max_size=4).map(
            lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode()
        ),
        "oversized": st.integers(min_value=1, max_value=4096).map(
            lambda extra: dump({**VALID.get(path, {}), "prompt": "x" * (MAX_BODY + extra)})
        ),
    }


# The kinds with a valid request around the hostile part weigh more: they get furthest in.
WEIGHTS = {"object": 2, "one_wrong_field": 4, "duplicate_keys": 1, "huge_numbers": 2, "invalid_utf8": 1}


def bodies(path: str, kind: str | None = None) -> st.SearchStrategy[Body]:
    """Hostile bodies for an endpoint: of one kind, or of any (weighted towards the valid-looking)."""
    strategies = kinds(path)
    names = [kind] if kind else [name for name in strategies for _ in range(WEIGHTS.get(name, 1))]
    kind_and_content = st.sampled_from(names).flatmap(lambda k: strategies[k].map(lambda c: (k, c)))
    return st.builds(
        lambda kc, ctype, chunked: Body(kc[0], kc[1], ctype, chunked),
        kind_and_content,
        st.sampled_from(CONTENT_TYPES),
        st.booleans(),
    )


DIGESTS = st.one_of(
    st.just("sha256:" + "a" * 64),
    st.text(alphabet="abcdef0123456789:sha-", min_size=1, max_size=80),
    st.text(min_size=1, max_size=30).filter(lambda t: "/" not in t and t not in (".", "..")),
)
# X-Request-ID is passed on to the upstreams: any value HTTP allows in a header (visible ASCII and
# obs-text bytes; DEL and controls are the HTTP server's to refuse, before the gateway sees them).
HEADER_CHARS = [chr(c) for c in (*range(0x21, 0x7F), *range(0x80, 0x100))]
REQUEST_IDS = st.one_of(st.none(), st.text(alphabet=st.sampled_from(HEADER_CHARS), max_size=300))


# ---- the gateway under test -----------------------------------------------------------------------


@dataclass
class Stats:
    bodies: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    upstream_5xx: list[str] = field(default_factory=list)  # allowed, but reported
    started: float = field(default_factory=time.monotonic)


STATS = Stats()


@pytest.fixture(scope="module")
def hostile_gateway() -> Iterator[httpx.Client]:
    vllm = VLLMStandin(models=["tiny", "Qwen/Qwen2.5-7B-Instruct"])
    vision = OllamaStandin()
    with ServerThread(vllm.app()) as vllm_server, ServerThread(vision.app()) as vision_server:
        settings_ = make_settings(
            vllm_server.url,
            vision_server.url,
            model_aliases="llama2:7b=tiny",
            adapter_max_body_bytes=MAX_BODY,
            adapter_access_log=False,
            adapter_health_interval=0.5,
        )
        with running_gateway(settings_) as url, httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT) as http:
            deadline = time.monotonic() + 10
            while http.get("/health").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert http.get("/health").status_code == 200, "the stand-ins were to be healthy before the run"
            STATS.started = time.monotonic()
            yield http
            _report()


def _report() -> None:
    figures = {
        "bodies_sent": STATS.bodies,
        "seconds": round(time.monotonic() - STATS.started, 1),
        "examples_per_case": EXAMPLES,
        "statuses": dict(sorted(STATS.statuses.items())),
        "body_kinds": dict(sorted(STATS.kinds.items())),
        "upstream_named_5xx": len(STATS.upstream_5xx),
        # by endpoint and message, the upstream's port left out so that runs compare
        "upstream_named_5xx_kinds": dict(
            Counter(re.sub(r"http://127\.0\.0\.1:\d+", "<upstream>", m) for m in STATS.upstream_5xx).most_common()
        ),
    }
    print("\nhostile input:", json.dumps(figures, indent=1))
    if REPORT:
        Path(REPORT).write_text(json.dumps(figures, indent=1) + "\n")


def send(http: httpx.Client, method: str, path: str, body: Body, request_id: str | None) -> httpx.Response:
    headers: dict[str, Any] = {}
    if body.content_type is not None:
        headers["content-type"] = body.content_type
    if request_id is not None:
        headers["x-request-id"] = request_id.encode("latin-1")
    content: Any = body.content
    if body.chunked:
        # An iterator: httpx sends it chunked, with no Content-Length.
        content = iter([body.content[i : i + 4096] for i in range(0, len(body.content), 4096)] or [b""])
    STATS.bodies += 1
    STATS.kinds[body.kind] += 1
    r = http.request(method, path, content=content, headers=headers)
    STATS.statuses[r.status_code] += 1
    return r


def check(endpoint: Endpoint | None, method: str, r: httpx.Response) -> None:
    """The properties; `endpoint` is None for a route or method the app does not declare."""
    if endpoint is None:
        # Ollama's router (gin) answers these in plain text.
        assert (r.status_code, r.text) in ((404, "404 page not found"), (405, "405 method not allowed")), (
            r.status_code,
            r.text[:300],
        )
        return
    status = r.status_code
    assert status != 500, f"a 500 of the gateway's own: {r.text[:500]}"
    if status >= 500:
        message = _error_message(endpoint, r) if method != "HEAD" else ""
        assert any(name in message for name in UPSTREAM_NAMES), f"a {status} that names no upstream: {r.text[:500]}"
        STATS.upstream_5xx.append(f"{status} {endpoint.id}: {message[:160]}")
        return
    if 200 <= status < 300:
        return
    assert 400 <= status < 500, (status, r.text[:300])
    if method == "HEAD":
        return  # no body to look at
    _error_message(endpoint, r)


def _error_message(endpoint: Endpoint, r: httpx.Response) -> str:
    try:
        body = orjson.loads(r.content)
    except orjson.JSONDecodeError:
        raise AssertionError(f"{r.status_code} with a body that is not JSON: {r.content[:300]!r}") from None
    assert isinstance(body, dict) and "error" in body, body
    if not endpoint.openai_style:
        assert isinstance(body["error"], str), body
        return body["error"]
    error = body["error"]
    assert isinstance(error, dict), body
    if endpoint.path.startswith("/v1/messages"):  # Anthropic's shape
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(error) == {"type", "message"}, body
    else:  # OpenAI's
        assert set(body) == {"error"} and set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["type"], str) and isinstance(error["message"], str), body
    return error["message"]


def _assert_still_serving(http: httpx.Client) -> None:
    root = http.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"


# ---- the properties -------------------------------------------------------------------------------


KINDS = list(kinds("/api/chat"))


def _cases() -> list[Any]:
    """Every declared route and method; where a body is read (POST, DELETE), every kind of hostile
    body separately, so each kind gets its examples on each endpoint."""
    cases = []
    for endpoint in ENDPOINTS:
        if endpoint.method in ("POST", "DELETE"):
            cases += [pytest.param(endpoint, kind, id=f"{endpoint.id}-{kind}") for kind in KINDS]
        else:
            cases.append(pytest.param(endpoint, None, id=f"{endpoint.id}-any"))
    return cases


@pytest.mark.parametrize(("endpoint", "kind"), _cases())
def test_hostile_bodies(endpoint: Endpoint, kind: str | None, hostile_gateway: httpx.Client) -> None:
    http = hostile_gateway
    fields_of = endpoint.path.replace("/{digest}", "")

    @HYPOTHESIS
    @given(body=bodies(fields_of, kind), digest=DIGESTS, request_id=REQUEST_IDS)
    def run(body: Body, digest: str, request_id: str | None) -> None:
        path = endpoint.path.replace("{digest}", quote(digest, safe=":"))
        r = send(http, endpoint.method, path, body, request_id)
        check(endpoint, endpoint.method, r)

    run()
    _assert_still_serving(http)


DECLARED = {(e.method, e.path) for e in ENDPOINTS}
UNKNOWN_PATHS = ["/api/nothing", "/v1/nothing", "/api", "/api/chat/extra", "/v2/chat/completions", "/API/CHAT"]


def test_unknown_routes_and_methods(hostile_gateway: httpx.Client) -> None:
    """Anything the routes table does not declare is Ollama's plain-text 404 or 405."""
    _unknown_with(hostile_gateway)
    _assert_still_serving(hostile_gateway)


def _unknown_with(http: httpx.Client) -> None:
    @HYPOTHESIS
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
        path=st.one_of(st.sampled_from(UNKNOWN_PATHS), st.sampled_from(sorted({e.path for e in ENDPOINTS}))),
        body=bodies("/api/chat"),
    )
    def run(method: str, path: str, body: Body) -> None:
        route = path
        if path == "/api/blobs/{digest}":
            path = "/api/blobs/sha256:" + "a" * 64
        if (method, route) in DECLARED:
            return  # a declared route and method: test_hostile_bodies covers it
        r = send(http, method, path, body, None)
        if method == "HEAD":
            assert r.status_code in (404, 405) and not r.content, r.status_code  # no body on HEAD
        else:
            check(None, method, r)

    run()


def test_gateway_still_answers_after_everything(hostile_gateway: httpx.Client) -> None:
    """After every hostile body: `/`, and a real request served end to end."""
    _assert_still_serving(hostile_gateway)
    r = hostile_gateway.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and orjson.loads(r.content.splitlines()[-1])["done"] is True
    families = text_string_to_metric_families(hostile_gateway.get("/metrics").text)
    inflight = [s for f in families if f.name == "ollama_adapter_inflight_requests" for s in f.samples]
    assert {s.labels["backend"] for s in inflight} == {"vllm", "ollama"}
    assert [s.value for s in inflight] == [0.0] * len(inflight)  # every slot given back
