"""The streamed answer's two ways of running: pushed from the upstream's read callback straight onto
uvicorn's httptools connection (what the gateway does), and the async-iterator way any other ASGI
server gets (here uvicorn's h11). Both must put the same NDJSON on the wire, report failures the same
way, and survive a client that reads slower than vLLM writes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import aiohttp
import httpx
import orjson
import pytest

import adapter.upstream as upstream_module
from adapter.app import create_app
from adapter.streaming import DirectBody
from adapter.upstream import Upstream
from tests.conftest import make_settings
from tests.standins.server import ServerThread
from tests.standins.vllm import Script, VLLMStandin


@pytest.fixture(params=["httptools", "h11"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[VLLMStandin, str]]:
    """A stand-in vLLM and a gateway in front of it, on the server implementation of the param."""
    vllm = VLLMStandin()
    with ServerThread(vllm.app()) as upstream:
        settings = make_settings(upstream.url, "http://127.0.0.1:9")
        with ServerThread(create_app(settings), http=request.param) as gateway:
            yield vllm, gateway.url


def _lines(url: str, body: dict) -> list[dict]:
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{url}/api/chat", json=body) as response:
        assert response.status_code == 200
        return [orjson.loads(line) for line in response.iter_lines() if line]


def test_the_same_ndjson_either_way(served: tuple[VLLMStandin, str]) -> None:
    vllm, url = served
    vllm.script = Script(tokens=[f"t{i} " for i in range(40)])
    lines = _lines(url, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert "".join(line["message"]["content"] for line in lines[:-1]) == "".join(f"t{i} " for i in range(40))
    assert all(line["done"] is False for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert list(final)[:5] == ["model", "created_at", "message", "done", "done_reason"]
    assert final["eval_count"] == 40 and final["prompt_eval_duration"] > 0


def test_a_cut_off_stream_ends_with_an_error_line_either_way(served: tuple[VLLMStandin, str]) -> None:
    vllm, url = served
    vllm.script = Script(tokens=[f"t{i} " for i in range(10)], die_after=4)
    lines = _lines(url, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert "error" in lines[-1] and not any(line.get("done") for line in lines)
    assert "".join(line["message"]["content"] for line in lines[:-1]).startswith("t0 t1 t2")


def test_an_upstream_error_event_ends_with_an_error_line_either_way(served: tuple[VLLMStandin, str]) -> None:
    vllm, url = served
    vllm.script = Script(tokens=[f"t{i} " for i in range(10)], error_event_after=3)
    lines = _lines(url, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert lines[-1]["error"] == "vLLM error: engine failure"
    assert [line["message"]["content"] for line in lines[:-1]][:3] == ["t0 ", "t1 ", "t2 "]


def test_a_slow_reader_gets_every_token_in_order(served: tuple[VLLMStandin, str]) -> None:
    """vLLM writes far faster than this client reads: the gateway holds vLLM back (pausing its
    reads while the client's socket is full) instead of buffering, and nothing is lost or reordered."""
    vllm, url = served
    count = 8_000  # of 1 KB each: more than the client's and the kernel's buffers hold (4 MB here)
    vllm.script = Script(tokens=[f"{i:05d}" + "x" * 1000 for i in range(count)])
    host, port = url.removeprefix("http://").split(":")
    body = orjson.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        time.sleep(1.0)  # not reading: the gateway's writes back up
        raw = bytearray()
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = bytes(raw).partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0] and b"chunked" in head.lower()
    text = _unchunk(payload)
    lines = [orjson.loads(line) for line in text.split(b"\n") if line]
    content = "".join(line["message"]["content"] for line in lines[:-1])
    assert content == "".join(f"{i:05d}" + "x" * 1000 for i in range(count))
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == count


def _unchunk(payload: bytes) -> bytes:
    out, rest = bytearray(), payload
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2 :]


def test_direct_writes_only_for_the_server_it_knows() -> None:
    async def some_send(message: dict) -> None:
        pass

    assert DirectBody.of(some_send) is None


def test_a_pushed_body_leaves_aiohttp_as_it_found_it() -> None:
    """The body's reader is aiohttp's own again once the body ended, nothing of the push is left,
    and the connection went back to the pool: the next request goes out on it."""
    vllm = VLLMStandin()
    # Paced, so the body is still coming when push_body starts (else aiohttp may have it all).
    vllm.script = Script(tokens=[f"t{i} " for i in range(20)], delay=0.005, first_delay=0.05)
    body = orjson.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True})

    async def two_pushed_bodies() -> list[tuple[str, int]]:
        upstream = Upstream("vllm", vllm_url)
        sockets = []
        try:
            for _ in range(2):
                response = await upstream.send("POST", "/v1/chat/completions", body=body)
                raw = response._raw
                assert raw.connection is not None and raw.connection.transport is not None
                sockets.append(raw.connection.transport.get_extra_info("sockname"))
                pieces: list[bytes] = []
                await response.push_body(pieces.append, 5.0)
                assert type(raw.content) is aiohttp.StreamReader
                assert b"data: [DONE]" in b"".join(pieces) and b"t19 " in b"".join(pieces)
                response.close()
            assert not upstream_module._PUSHED
        finally:
            await upstream.aclose()
        return sockets

    with ServerThread(vllm.app()) as server:
        vllm_url = server.url
        first, second = asyncio.run(two_pushed_bodies())
    assert first == second
