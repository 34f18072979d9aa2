"""`python -m adapter canary-check MODEL`: smoke-test a model's canary backend before promoting it.

The gateway is started in this process on a free loopback port, with the catalog in use and every
request for MODEL sent to its canary backend, and real requests go through it as an unchanged
Ollama client sends them, so they take the same translation path as production traffic: a chat, a
streamed chat, a `format` JSON schema, and a tool call when the model has tools. Each check prints
a line; the command exits 1 naming what failed (2 when it cannot run at all). Promotion is then an
edit of the catalog (point the model's `backend` at the canary's) and a SIGHUP.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import uvicorn

from adapter.app import create_app
from adapter.catalog import Catalog, normalize_name
from adapter.config import Settings

TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    },
}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


class CheckFailed(Exception):
    pass


def _post(base: str, path: str, body: dict[str, Any], timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _answer(status: int, raw: bytes) -> dict[str, Any]:
    if status != 200:
        raise CheckFailed(f"HTTP {status}: {raw[:300].decode(errors='replace')}")
    answer = json.loads(raw)
    if "error" in answer or not answer.get("done"):
        raise CheckFailed(f"not a whole answer: {raw[:300].decode(errors='replace')}")
    return answer  # type: ignore[no-any-return]


def checks(base: str, model: str, tools: bool, timeout: float) -> list[tuple[str, Callable[[], str]]]:
    messages = [{"role": "user", "content": "Say hello in one short sentence."}]
    options = {"num_predict": 48, "temperature": 0}

    def chat() -> str:
        answer = _answer(
            *_post(
                base, "/api/chat", {"model": model, "messages": messages, "stream": False, "options": options}, timeout
            )
        )
        if answer["message"].get("role") != "assistant":
            raise CheckFailed("the answer has no assistant message")
        return f"{answer.get('eval_count', 0)} tokens, done_reason {answer.get('done_reason')}"

    def streamed() -> str:
        status, raw = _post(base, "/api/chat", {"model": model, "messages": messages, "options": options}, timeout)
        if status != 200:
            raise CheckFailed(f"HTTP {status}: {raw[:300].decode(errors='replace')}")
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if not lines or any("error" in line for line in lines) or not lines[-1].get("done"):
            raise CheckFailed(f"the stream did not end with done: true: {raw[-300:].decode(errors='replace')}")
        return f"{len(lines)} lines"

    def structured() -> str:
        body = {"model": model, "messages": messages, "format": SCHEMA, "stream": False, "options": options}
        answer = _answer(*_post(base, "/api/chat", body, timeout))
        try:
            value = json.loads(answer["message"]["content"])
        except ValueError:
            if answer.get("done_reason") == "length":
                raise CheckFailed("the JSON answer was cut off by the token limit") from None
            raise CheckFailed(f"not JSON: {answer['message']['content'][:200]!r}") from None
        if not isinstance(value, dict) or not isinstance(value.get("answer"), str):
            raise CheckFailed(f"does not follow the schema: {value!r:.200}")
        return "schema followed"

    def tool_call() -> str:
        ask = [{"role": "user", "content": "What time is it in Tokyo? Use the tool."}]
        body = {"model": model, "messages": ask, "tools": [TOOL], "stream": False, "options": options}
        answer = _answer(*_post(base, "/api/chat", body, timeout))
        calls = answer["message"].get("tool_calls") or []
        for call in calls:
            if not isinstance(call.get("function", {}).get("arguments"), dict):
                raise CheckFailed(f"a tool call without object arguments: {call!r:.200}")
        return f"{len(calls)} tool call(s)" if calls else "answered in text"

    found = [("chat", chat), ("streamed chat", streamed), ("format", structured)]
    if tools:
        found.append(("tools", tool_call))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(model: str, settings: Settings, catalog: Catalog, timeout: float = 120.0) -> int:
    entry = next(
        (e for e in catalog.models if normalize_name(model) in map(normalize_name, (e.name, *e.aliases))), None
    )
    if entry is None or entry.canary is None:
        print(f"canary-check: model {model!r} has no canary in ADAPTER_MODELS_FILE")
        return 2
    port = _free_port()
    app = create_app(settings.model_copy(update={"adapter_port": port}), catalog, force_canary=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            print("canary-check: the gateway did not start")
            return 2
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    tools = entry.capabilities is None or "tools" in entry.capabilities
    print(f"canary-check {model}: backend {entry.canary.backend!r} ({entry.canary.share:g}% of traffic)")
    failed = []
    try:
        for name, check in checks(base, model, tools, timeout):
            try:
                print(f"  ok    {name}: {check()}")
            except (CheckFailed, OSError, ValueError) as exc:
                failed.append(name)
                print(f"  FAIL  {name}: {exc}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    if failed:
        print(f"canary-check {model}: failed: {', '.join(failed)}")
        return 1
    print(f"canary-check {model}: every check passed")
    return 0
