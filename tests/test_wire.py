"""Byte-level wire format and bad input, with plain HTTP (what curl and the JS client see)."""

from __future__ import annotations

import re

import httpx
import orjson
import pytest

from tests.standins.vllm import Script, VLLMStandin

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


def test_root_and_head(http: httpx.Client) -> None:
    r = http.get("/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert r.headers["content-type"].startswith("text/plain")
    h = http.head("/")
    assert h.status_code == 200


def test_version(http: httpx.Client) -> None:
    r = http.get("/api/version")
    assert r.content == b'{"version":"0.33.0"}'
    major, minor, patch = (int(x) for x in r.json()["version"].split("."))
    assert (major, minor, patch) >= (0, 6, 4)


def test_unknown_route_and_method_like_ollama(http: httpx.Client) -> None:
    r = http.get("/api/nothing")
    assert r.status_code == 404 and r.text == "404 page not found"
    r = http.get("/api/chat")
    assert r.status_code == 405 and r.text == "405 method not allowed"


def test_stream_defaults_to_true_and_is_ndjson(http: httpx.Client) -> None:
    # curl sends form-urlencoded; the body is JSON regardless.
    r = http.post(
        "/api/chat",
        content=b'{"model":"tiny","messages":[{"role":"user","content":"hi"}]}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.content.endswith(b"\n")
    lines = r.content.split(b"\n")[:-1]
    assert all(lines), "no blank lines in an NDJSON stream"
    objs = [orjson.loads(line) for line in lines]
    for obj in objs[:-1]:
        assert list(obj) == ["model", "created_at", "message", "done"]
        assert obj["message"]["role"] == "assistant" and obj["done"] is False
        assert RFC3339_UTC.match(obj["created_at"])
        assert "error" not in obj
    final = objs[-1]
    assert list(final) == [
        "model",
        "created_at",
        "message",
        "done",
        "done_reason",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ]
    assert final["message"] == {"role": "assistant", "content": ""}
    assert all(isinstance(final[k], int) for k in list(final)[5:])


def test_generate_chunk_key_order(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
    objs = [orjson.loads(line) for line in r.content.splitlines()]
    assert list(objs[0]) == ["model", "created_at", "response", "done"]
    assert list(objs[-1])[:6] == ["model", "created_at", "response", "done", "done_reason", "total_duration"]


def test_non_stream_is_one_json_object(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["response"] == "Hello from tiny!" and body["done"] is True


def test_load_response_is_plain_json(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": "tiny"})
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["done_reason"] == "load" and body["response"] == "" and body["done"] is True


def test_name_is_alias_of_model(http: httpx.Client) -> None:
    r = http.post("/api/chat", json={"name": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": False})
    assert r.status_code == 200 and r.json()["message"]["content"] == "Hello from tiny!"


BAD_BODIES = [
    (b"", "missing request body"),
    (b"not json", "invalid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'"string"', "expected a JSON object"),
    (b'{"messages": []}', "model is required"),
    (b'{"model": 5, "messages": []}', "model"),
    (b'{"model": "tiny", "messages": "hello"}', "messages"),
    (b'{"model": "tiny", "messages": [{"content": "x"}]}', "role"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', "content"),
    (b'{"model": "tiny", "messages": [1]}', "messages"),
    (b'{"model": "tiny", "stream": "yes", "messages": []}', "stream"),
    (b'{"model": "tiny", "options": [], "messages": []}', "options"),
    (
        b'{"model": "tiny", "options": {"temperature": "hot"}, "messages": [{"role": "user", "content": "x"}]}',
        "temperature",
    ),
    (b'{"model": "tiny", "options": {"num_predict": 1e400}, "messages": [{"role": "user", "content": "x"}]}', ""),
    (
        b'{"model": "tiny", "options": {"seed": 99999999999999999999999}, "messages": [{"role": "user"}]}',
        "seed",
    ),
    (b'{"model": "tiny", "keep_alive": "300", "messages": []}', "missing unit"),
    (b'{"model": "tiny", "keep_alive": true, "messages": []}', "keep_alive"),
    (b'{"model": "tiny", "format": 12, "messages": [{"role": "user", "content": "x"}]}', "format"),
    (b'{"model": "tiny", "format": "yaml", "messages": [{"role": "user", "content": "x"}]}', "invalid format"),
    (b'{"model": "tiny", "think": "extreme", "messages": [{"role": "user", "content": "x"}]}', "think"),
    (b'{"model": "tiny", "top_logprobs": 50, "messages": [{"role": "user", "content": "x"}]}', "top_logprobs"),
]


@pytest.mark.parametrize(("raw", "needle"), BAD_BODIES)
def test_bad_chat_bodies_are_400(http: httpx.Client, vllm: VLLMStandin, raw: bytes, needle: str) -> None:
    r = http.post("/api/chat", content=raw)
    assert r.status_code == 400, r.text
    body = r.json()
    assert list(body) == ["error"]
    assert needle.lower() in body["error"].lower()
    assert vllm.requests == []


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"model": "tiny", "prompt": 5}', "prompt"),
        (b'{"model": "tiny", "prompt": "x", "raw": true, "system": "s"}', "raw mode"),
        (b'{"model": "tiny", "prompt": "x", "images": "abc"}', "images"),
        (b'{"model": "tiny", "prompt": "x", "context": ["a"]}', "context"),
        (b'{"model": "tiny", "prompt": "x", "suffix": "y"}', "does not support insert"),
    ],
)
def test_bad_generate_bodies_are_400(http: httpx.Client, vllm: VLLMStandin, raw: bytes, needle: str) -> None:
    r = http.post("/api/generate", content=raw)
    assert r.status_code == 400, r.text
    assert needle.lower() in r.json()["error"].lower()
    assert vllm.requests == []


def test_gateway_keeps_serving_after_bad_input(http: httpx.Client) -> None:
    for raw, _ in BAD_BODIES:
        http.post("/api/chat", content=raw)
    r = http.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": False})
    assert r.status_code == 200


def test_upstream_garbage_is_reported_not_500(http: httpx.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(garbage=b"data: {not json}\n\n")
    r = http.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    last = orjson.loads(r.content.splitlines()[-1])
    assert list(last) == ["error"] and "malformed" in last["error"]
    vllm.script = Script(garbage=b"<html>oops</html>")
    r = http.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": False})
    assert r.status_code == 502 and r.json()["error"].startswith("vLLM failed")


def test_stream_without_usage_still_ends_with_done(http: httpx.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(tokens=["a"], error_status=None)
    r = http.post("/api/generate", json={"model": "tiny", "prompt": "x"})
    last = orjson.loads(r.content.splitlines()[-1])
    assert last["done"] is True


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"choices": "nope"}\n\ndata: [DONE]\n\n',
        b"data: [1, 2, 3]\n\ndata: [DONE]\n\n",
        b'data: {"choices": [{"delta": {"content": 5}}]}\n\ndata: [DONE]\n\n',
        b'data: {"choices": [{"delta": {"tool_calls": "x"}}]}\n\ndata: [DONE]\n\n',
    ],
)
def test_upstream_wrong_shapes_reported(http: httpx.Client, vllm: VLLMStandin, body: bytes) -> None:
    vllm.script = Script(garbage=body)
    r = http.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    last = orjson.loads(r.content.splitlines()[-1])
    assert list(last) == ["error"] or last.get("done") is True


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"choices": "x"}', b'{"choices": [{"message": 5}]}', b"{}"])
def test_upstream_wrong_shapes_non_streaming(http: httpx.Client, vllm: VLLMStandin, body: bytes) -> None:
    vllm.script = Script(garbage=body)
    r = http.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": False})
    assert r.status_code in (200, 502), r.text
    if r.status_code == 502:
        assert "vLLM" in r.json()["error"]
