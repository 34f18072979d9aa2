"""The official `ollama` Python client, unchanged, against the running gateway (vLLM stand-in behind)."""

from __future__ import annotations

import threading
import time

import httpx
import ollama
import pytest

from tests.standins.vllm import Script, VLLMStandin


def test_list_shows_served_models_and_aliases(client: ollama.Client) -> None:
    listed = client.list()
    names = [m.model for m in listed.models]
    assert "tiny:latest" in names
    assert "Qwen/Qwen2.5-7B-Instruct:latest" in names
    assert "llama2:7b" in names  # MODEL_ALIASES entries are listed too
    qwen = next(m for m in listed.models if m.model == "Qwen/Qwen2.5-7B-Instruct:latest")
    assert qwen.details.family == "qwen2"
    assert qwen.details.parameter_size == "7B"
    assert qwen.details.format == "safetensors"
    assert len(qwen.digest) == 64
    assert qwen.size > 0
    assert qwen.modified_at is not None


def test_chat_non_streaming(client: ollama.Client, vllm: VLLMStandin) -> None:
    resp = client.chat(model="tiny", messages=[{"role": "user", "content": "Hi there"}])
    assert resp.model == "tiny"
    assert resp.message.role == "assistant"
    assert resp.message.content == "Hello from tiny!"
    assert resp.done is True
    assert resp.done_reason == "stop"
    assert resp.eval_count == 4
    assert resp.prompt_eval_count == 5
    assert resp.total_duration > 0 and resp.eval_duration > 0
    # Ollama always sends prompt_eval_duration; scripts compute prompt tokens/s from it.
    assert resp.prompt_eval_duration is not None and resp.prompt_eval_duration > 0
    assert resp.total_duration >= resp.load_duration + resp.prompt_eval_duration + resp.eval_duration
    sent = vllm.requests[-1]["body"]
    assert sent["model"] == "tiny"
    # vLLM is always asked for a stream: the gateway folds it into one answer.
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert "tools" not in sent  # the client sends "tools": [], which vLLM 0.32 rejects


def test_chat_streaming(client: ollama.Client, vllm: VLLMStandin) -> None:
    parts = list(client.chat(model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert "".join(p.message.content for p in parts) == "Hello from tiny!"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    final = parts[-1]
    assert final.done_reason == "stop"
    assert final.eval_count == 4 and final.prompt_eval_count == 4
    for field in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(final, field), int), field
    assert vllm.requests[-1]["body"]["stream_options"] == {"include_usage": True}


def test_generate_non_streaming_and_streaming(client: ollama.Client, vllm: VLLMStandin) -> None:
    resp = client.generate(model="tiny", prompt="Why is the sky blue?", system="Be brief")
    assert resp.response == "Hello from tiny!"
    assert resp.done and resp.done_reason == "stop"
    sent = vllm.requests[-1]
    assert sent["path"] == "/v1/chat/completions"  # templated generate goes through the chat template
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    parts = list(client.generate(model="tiny", prompt="Why?", stream=True))
    assert "".join(p.response for p in parts) == "Hello from tiny!"
    assert parts[-1].done and parts[-1].eval_count == 4


def test_raw_generate_uses_completions(client: ollama.Client, vllm: VLLMStandin) -> None:
    resp = client.generate(model="tiny", prompt="<s>raw prompt", raw=True)
    assert resp.response == "Hello from tiny!"
    sent = vllm.requests[-1]
    assert sent["path"] == "/v1/completions"
    assert sent["body"]["prompt"] == "<s>raw prompt"
    assert sent["body"]["max_tokens"] is None  # vLLM's completions would stop at 16 tokens otherwise


def test_options_mapped_to_sampling(client: ollama.Client, vllm: VLLMStandin) -> None:
    client.chat(
        model="tiny",
        messages=[{"role": "user", "content": "x"}],
        options={
            "num_predict": 2,
            "temperature": 0.1,
            "top_p": 0.5,
            "top_k": 7,
            "min_p": 0.05,
            "seed": 42,
            "stop": ["\n"],
            "repeat_penalty": 1.2,
            "presence_penalty": 0.3,
            "frequency_penalty": 0.4,
            "num_ctx": 8192,
            "mirostat": 0,
            "numa": False,
        },
        keep_alive="10m",
    )
    sent = vllm.requests[-1]["body"]
    assert sent["max_tokens"] == 2 and sent["temperature"] == 0.1 and sent["top_p"] == 0.5
    assert sent["top_k"] == 7 and sent["min_p"] == 0.05 and sent["seed"] == 42 and sent["stop"] == ["\n"]
    assert sent["repetition_penalty"] == 1.2 and sent["presence_penalty"] == 0.3 and sent["frequency_penalty"] == 0.4
    for leaked in ("num_ctx", "keep_alive", "mirostat", "numa", "options", "num_predict"):
        assert leaked not in sent


def test_num_predict_gives_length(client: ollama.Client, vllm: VLLMStandin) -> None:
    resp = client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], options={"num_predict": 2})
    assert resp.done_reason == "length"
    assert resp.eval_count == 2
    parts = list(client.generate(model="tiny", prompt="x", options={"num_predict": 3}, stream=True))
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 3


def test_negative_num_predict_and_seed_are_dropped(client: ollama.Client, vllm: VLLMStandin) -> None:
    client.generate(model="tiny", prompt="x", options={"num_predict": -1, "seed": -1})
    sent = vllm.requests[-1]["body"]
    assert "max_tokens" not in sent and "seed" not in sent


def test_latest_suffix_and_case_resolve(client: ollama.Client, vllm: VLLMStandin) -> None:
    assert client.chat(model="tiny:latest", messages=[{"role": "user", "content": "x"}]).model == "tiny:latest"
    assert client.chat(model="TINY", messages=[{"role": "user", "content": "x"}]).model == "TINY"
    assert vllm.requests[-1]["body"]["model"] == "tiny"


def test_alias_resolves_to_served_model(client: ollama.Client, vllm: VLLMStandin) -> None:
    resp = client.chat(model="llm", messages=[{"role": "user", "content": "x"}])
    assert resp.model == "llm"  # echoed verbatim
    assert vllm.requests[-1]["body"]["model"] == "Qwen/Qwen2.5-7B-Instruct"


def test_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    assert info.value.error == 'model "nope" not found, try pulling it first'


def test_vllm_4xx_passed_through(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.max_model_len = 10
    try:
        with pytest.raises(ollama.ResponseError) as info:
            client.chat(model="tiny", messages=[{"role": "user", "content": "word " * 50}])
        assert info.value.status_code == 400
        assert "maximum context length" in info.value.error
        with pytest.raises(ollama.ResponseError) as info:
            list(client.chat(model="tiny", messages=[{"role": "user", "content": "word " * 50}], stream=True))
        assert info.value.status_code == 400
    finally:
        vllm.max_model_len = 2048
    assert len(vllm.requests) == 2  # never retried


def test_load_and_unload_answered_locally(client: ollama.Client, vllm: VLLMStandin) -> None:
    assert client.generate(model="tiny", prompt="").done_reason == "load"
    assert client.generate(model="tiny", prompt="", keep_alive=0).done_reason == "unload"
    assert client.chat(model="tiny", messages=[]).done_reason == "load"
    assert client.chat(model="tiny", messages=[], keep_alive=0).done_reason == "unload"
    assert vllm.requests == []


def test_streaming_is_incremental(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(tokens=[f" t{i}" for i in range(10)], delay=0.2)
    start = time.monotonic()
    stream = client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], stream=True)
    first = next(iter(stream))
    first_at = time.monotonic() - start
    rest = list(stream)
    total = time.monotonic() - start
    assert first.message.content == " t0"
    # The last token is produced ~2 s in; the first must arrive long before.
    assert first_at < total / 2
    assert rest[-1].done


def test_client_disconnect_cancels_upstream(gateway: str, vllm: VLLMStandin) -> None:
    vllm.script = Script(tokens=[f" t{i}" for i in range(200)], delay=0.05)
    with (
        httpx.Client(base_url=gateway, timeout=10) as http,
        http.stream(
            "POST", "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
        ) as resp,
    ):
        lines = resp.iter_lines()
        assert '"done":false' in next(lines)
        assert vllm.active == 1
    deadline = time.monotonic() + 3
    while vllm.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert vllm.active == 0
    assert vllm.cancelled == 1
    assert vllm.completed == 0


def test_client_disconnect_cancels_non_streaming_upstream(gateway: str, vllm: VLLMStandin) -> None:
    vllm.script = Script(tokens=[f" t{i}" for i in range(100)], delay=0.05)

    def leave_early() -> None:
        with httpx.Client(base_url=gateway, timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
            http.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})

    t = threading.Thread(target=leave_early)
    t.start()
    t.join()
    deadline = time.monotonic() + 3
    while vllm.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert vllm.active == 0
    assert vllm.completed == 0


def test_mid_stream_failure_ends_with_error_line(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(tokens=["a", "b", "c", "d"], die_after=2)
    stream = client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], stream=True)
    got = []
    with pytest.raises(ollama.ResponseError) as info:
        for part in stream:
            got.append(part.message.content)
    assert got == ["a", "b"]
    assert "vLLM" in info.value.error


def test_error_event_inside_stream(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(tokens=["a", "b", "c"], error_event_after=1)
    with pytest.raises(ollama.ResponseError) as info:
        list(client.generate(model="tiny", prompt="x", stream=True))
    assert "engine failure" in info.value.error


def test_vllm_down_gives_prompt_502(vision_server, down_url: str) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings, running_gateway

    with running_gateway(make_settings(down_url, vision_server[1].url)) as url:
        c = ollama.Client(host=url)
        start = time.monotonic()
        with pytest.raises(ollama.ResponseError) as info:
            c.chat(model="tiny", messages=[{"role": "user", "content": "x"}])
        assert time.monotonic() - start < 5
        assert info.value.status_code == 502
        assert "vLLM" in info.value.error
        assert httpx.get(url + "/").text == "Ollama is running"
        # Ollama Vision's models are still listed while vLLM is down.
        assert "llava:7b" in [m.model for m in c.list().models]
