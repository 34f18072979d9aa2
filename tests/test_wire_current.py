"""What a user of current Ollama (0.30-0.33) notices, through the official client where it can tell.

References: shared/ollama-api.md ("Newer Ollama API surface"), Ollama v0.33 api/types.go and
server/routes.go (the tags/ps/show shapes, HEAD routes, truncate), and the clients' own parsers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from tests.conftest import make_settings, running_gateway
from tests.standins.ollama import OllamaStandin
from tests.standins.server import ServerThread
from tests.standins.vllm import Script, VLLMStandin

# --- HEAD routes, listings ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/version", "/api/tags"])
def test_head_answers_200_without_a_body(http: httpx.Client, path: str) -> None:
    r = http.head(path)
    assert r.status_code == 200
    assert r.content == b""
    if path != "/":
        assert r.headers["content-type"].startswith("application/json")


def test_tags_entries_carry_capabilities_and_context_length(client: ollama.Client, http: httpx.Client) -> None:
    # Ollama 0.30: ListModelResponse.capabilities; ModelDetails.context_length filled in /api/tags.
    listed = {m.model: m for m in client.list().models}
    assert listed["tiny:latest"].details is not None and listed["tiny:latest"].details.family
    raw = {m["model"]: m for m in http.get("/api/tags").json()["models"]}
    tiny = raw["tiny:latest"]
    assert list(tiny)[-2:] == ["details", "capabilities"]
    assert tiny["capabilities"] == ["completion", "tools"]
    assert tiny["details"]["context_length"] == 2048


def test_ps_entries_carry_context_length(client: ollama.Client) -> None:
    running = {m.model: m for m in client.ps().models}
    assert running["tiny:latest"].context_length == 2048
    assert running["llama2:7b"].context_length == 2048  # an alias: its target's


def test_show_details_context_length(client: ollama.Client, http: httpx.Client) -> None:
    shown = client.show("tiny")
    assert shown.modelinfo is not None
    assert shown.modelinfo[f"{shown.modelinfo['general.architecture']}.context_length"] == 2048
    assert http.post("/api/show", json={"model": "tiny"}).json()["details"]["context_length"] == 2048


# --- think ----------------------------------------------------------------------------------------


def test_think_max_is_accepted_and_named_in_the_error(http: httpx.Client, vllm: VLLMStandin) -> None:
    ok = http.post("/api/chat", json={"model": "tiny", "think": "max", "messages": [{"role": "user", "content": "x"}]})
    assert ok.status_code == 200
    sent = vllm.requests[-1]["body"]
    assert sent["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "max"}
    bad = http.post(
        "/api/chat", json={"model": "tiny", "think": "huge", "messages": [{"role": "user", "content": "x"}]}
    )
    assert bad.status_code == 400
    assert '"max"' in bad.json()["error"]


# --- prompt_eval_duration ---------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["chat", "generate"])
def test_non_streamed_answers_have_prompt_eval_duration(client: ollama.Client, vllm: VLLMStandin, endpoint: str):
    vllm.script = Script(first_delay=0.05)
    if endpoint == "chat":
        resp: Any = client.chat(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    else:
        resp = client.generate(model="tiny", prompt="Hi")
    # What `ollama run --verbose` prints as the prompt eval rate: tokens / prompt_eval_duration.
    assert resp.prompt_eval_count and resp.prompt_eval_duration
    assert resp.prompt_eval_duration >= 50_000_000  # the stand-in's time to the first token
    assert resp.eval_duration is not None and resp.eval_duration < resp.prompt_eval_duration


# --- pass-through keeps the client's model name -------------------------------------------------------


@pytest.mark.parametrize("name", ["nomic-embed-text", "NOMIC-EMBED-TEXT:latest"])
def test_pass_through_keeps_the_model_name_as_written(client: ollama.Client, vision: OllamaStandin, name: str):
    client.embed(model=name, input="hello")
    assert vision.requests[-1]["body"]["model"] == name


def test_pass_through_maps_an_alias(vllm_server, vision_server, vision: OllamaStandin) -> None:
    settings = make_settings(vllm_server[1].url, vision_server[1].url, model_aliases="embedder=nomic-embed-text")
    with running_gateway(settings) as url:
        ollama.Client(host=url).embed(model="embedder", input="hello")
    assert vision.requests[-1]["body"]["model"] == "nomic-embed-text"


# --- truncate ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_context(vision_server) -> Iterator[tuple[VLLMStandin, str]]:  # type: ignore[no-untyped-def]
    """A vLLM stand-in with a 60-token context behind a gateway of its own (the shared gateway's
    cached model list must not learn a context length other tests do not expect)."""
    standin = VLLMStandin(models=["tiny"], max_model_len=60)
    with ServerThread(standin.app()) as server, running_gateway(make_settings(server.url, vision_server[1].url)) as url:
        yield standin, url


@pytest.fixture
def small(short_context: tuple[VLLMStandin, str]) -> tuple[VLLMStandin, ollama.Client, httpx.Client]:
    standin, url = short_context
    standin.requests.clear()
    return standin, ollama.Client(host=url), httpx.Client(base_url=url, timeout=10)


def history(turns: int) -> list[dict[str, str]]:
    """A system prompt, then `turns` user/assistant exchanges of 10 words each, then a question."""
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "word " * 8})
        messages.append({"role": "assistant", "content": f"answer {i} " + "word " * 8})
    messages.append({"role": "user", "content": "And now?"})
    return messages


def test_truncate_drops_the_oldest_history_until_the_prompt_fits(small) -> None:  # type: ignore[no-untyped-def]
    vllm, client, _ = small  # the stand-in counts words: the whole history is ~210, its context 60
    resp = client.chat(model="tiny", messages=history(10))
    assert resp.done and resp.message.content == "Hello from tiny!"
    answered = vllm.requests[-1]["body"]["messages"]
    assert vllm.requests[-1]["path"] == "/v1/chat/completions"
    assert answered[0] == {"role": "system", "content": "Be brief."}  # system messages stay
    assert answered[-1] == {"role": "user", "content": "And now?"}  # the newest message stays
    assert len(answered) < len(history(10))
    assert VLLMStandin._prompt_tokens({"messages": answered}) < 60
    # The longest history that fits: one more exchange would not.
    longer = [answered[0], *history(10)[-len(answered) - 1 : -len(answered) + 1], *answered[1:]]
    assert VLLMStandin._prompt_tokens({"messages": longer}) >= 60
    tokenized = [r for r in vllm.requests if r["path"] == "/tokenize"]
    assert 1 <= len(tokenized) <= 5  # a binary search, not a call per message


def test_truncate_streamed_too(small) -> None:  # type: ignore[no-untyped-def]
    _, client, _ = small
    parts = list(client.chat(model="tiny", messages=history(10), stream=True))
    assert "".join(p.message.content for p in parts) == "Hello from tiny!" and parts[-1].done


def test_truncate_false_keeps_vllms_400(small) -> None:  # type: ignore[no-untyped-def]
    vllm, _, http = small
    r = http.post("/api/chat", json={"model": "tiny", "truncate": False, "stream": False, "messages": history(10)})
    assert r.status_code == 400
    assert "maximum context length is 60 tokens" in r.json()["error"]
    assert not [q for q in vllm.requests if q["path"] == "/tokenize"]


def test_truncate_when_even_the_newest_message_cannot_fit_keeps_vllms_400(small) -> None:  # type: ignore[no-untyped-def]
    _, client, _ = small
    messages = [*history(2), {"role": "user", "content": "long " * 100}]
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="tiny", messages=messages)
    assert info.value.status_code == 400
    assert "maximum context length" in info.value.error


def test_shift_is_accepted(http: httpx.Client) -> None:
    # vLLM never shifts the context: generation ends with done_reason "length" at the limit, which is
    # what Ollama does with shift off.
    body = {"model": "tiny", "shift": False, "stream": False, "messages": [{"role": "user", "content": "x"}]}
    assert http.post("/api/chat", json=body).json()["done"] is True


# --- /v1/messages (Anthropic) and /v1/responses ---------------------------------------------------------


def test_v1_messages_relayed_to_vllm_untouched(http: httpx.Client, vllm: VLLMStandin) -> None:
    body = {"model": "llama2:7b", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    r = http.post(
        "/v1/messages?beta=true", json=body, headers={"x-api-key": "ollama", "anthropic-version": "2023-06-01"}
    )
    assert r.status_code == 200
    answer = r.json()
    assert answer["type"] == "message" and answer["content"][0]["text"] == "Hello from tiny!"
    assert vllm.requests[-1]["path"] == "/v1/messages"
    assert vllm.requests[-1]["body"]["model"] == "tiny"  # the alias, resolved


def test_v1_messages_streamed_events_untouched(http: httpx.Client) -> None:
    body = {"model": "tiny", "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with http.stream("POST", "/v1/messages", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    deltas = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert "".join(d["delta"]["text"] for d in deltas if d["type"] == "content_block_delta") == "Hello from tiny!"


def test_v1_messages_count_tokens(http: httpx.Client) -> None:
    r = http.post("/v1/messages/count_tokens", json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200 and r.json()["input_tokens"] > 0


def test_v1_messages_errors_are_anthropic_shaped(http: httpx.Client) -> None:
    unknown = http.post("/v1/messages", json={"model": "nope", "max_tokens": 5, "messages": []})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'nope' not found"},
    }
    bad = http.post("/v1/messages", json={"model": "tiny", "messages": "Hi"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_v1_responses_relayed_to_vllm(http: httpx.Client, vllm: VLLMStandin) -> None:
    r = http.post("/v1/responses", json={"model": "tiny", "input": "Hi"})
    assert r.status_code == 200
    assert r.json()["output"][0]["content"][0]["text"] == "Hello from tiny!"
    assert vllm.requests[-1]["path"] == "/v1/responses"
    missing = http.post("/v1/responses", json={"model": "nope", "input": "Hi"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_v1_messages_with_an_image_for_a_blind_model_go_to_ollama_vision(http: httpx.Client, vision: OllamaStandin):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    body = {"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": [image]}]}
    r = http.post("/v1/messages", json=body)
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "I see a cat"
    assert vision.requests[-1]["path"] == "/v1/messages"
    assert vision.requests[-1]["body"]["model"] == "tiny"


# --- streamed tool calls, parsed the way Haystack's OllamaChatGenerator parses them ----------------------


def haystack_tool_calls(lines: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """ollama-haystack 7.0.2 (`_handle_streaming_response`): a counter goes up for each line that
    has tool_calls; every call in that line gets the counter as its key; the first name seen for a
    key is kept and its arguments are overwritten. `function.index` and ids are never read."""
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    counter = 0
    for line in lines:
        calls = (line.get("message") or {}).get("tool_calls")
        if not calls:
            continue
        counter += 1
        for call in calls:
            names.setdefault(counter, call["function"]["name"])
            arguments[counter] = json.dumps(call["function"]["arguments"])
    return [(names[k], json.loads(arguments[k])) for k in names]


def test_two_streamed_tool_calls_survive_a_per_line_parser(http: httpx.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(
        tokens=[],
        tool_calls=[
            {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"name": "get_time", "arguments": '{"tz": "UTC"}'},
        ],
    )
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [tool]}
    lines = [json.loads(line) for line in http.post("/api/chat", json=body).text.splitlines()]
    assert haystack_tool_calls(lines) == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]
    indexes = [c["function"]["index"] for line in lines for c in (line["message"].get("tool_calls") or [])]
    assert indexes == [0, 1]
    assert lines[-1]["done"] is True and lines[-1]["prompt_eval_count"] and lines[-1]["eval_count"]
