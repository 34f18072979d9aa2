"""Tools, structured output, thinking and images for multimodal vLLM models, through the official client."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import ollama
import orjson
import pytest
from pydantic import BaseModel

from tests.conftest import make_settings, running_gateway
from tests.standins.vllm import Script, VLLMStandin


def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather for a city.

    Args:
        city: The city name
        unit: celsius or fahrenheit
    """
    return f"22 degrees {unit} in {city}"


def test_tool_call_round_trip_streaming_and_not(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(
        tokens=[], tool_calls=[{"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}]
    )
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    resp = client.chat(model="tiny", messages=messages, tools=[get_weather])
    assert resp.done_reason == "stop"  # never "tool_calls"
    call = resp.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Paris", "unit": "celsius"}
    sent = vllm.requests[-1]["body"]
    assert sent["tools"][0]["function"]["name"] == "get_weather"

    parts = list(client.chat(model="tiny", messages=messages, tools=[get_weather], stream=True))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1, "each tool call is emitted whole, once"
    assert with_calls[0].message.tool_calls[0].function.arguments == {"city": "Paris", "unit": "celsius"}
    assert parts[-1].done and parts[-1].done_reason == "stop"

    # Round trip: the call and its result go back; vLLM gets OpenAI-shaped history.
    messages.append(resp.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "content": get_weather("Paris"), "tool_name": "get_weather"})
    vllm.script = Script(tokens=["It is ", "22 degrees."])
    final = client.chat(model="tiny", messages=messages, tools=[get_weather])
    assert final.message.content == "It is 22 degrees."
    history = vllm.requests[-1]["body"]["messages"]
    assistant, tool = history[1], history[2]
    assert assistant["tool_calls"][0]["type"] == "function"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert tool == {
        "role": "tool",
        "content": "22 degrees celsius in Paris",
        "tool_call_id": assistant["tool_calls"][0]["id"],
        "name": "get_weather",
    }


def test_parallel_tool_calls_streamed_in_fragments(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(
        tokens=[],
        tool_calls=[
            {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"name": "get_weather", "arguments": '{"city": "Tokyo", "unit": "fahrenheit"}'},
        ],
        tool_fragments=7,
        tool_finish_reason="stop",  # some vLLM parsers finish with stop
    )
    parts = list(
        client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], tools=[get_weather], stream=True)
    )
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.arguments for c in calls] == [{"city": "Paris"}, {"city": "Tokyo", "unit": "fahrenheit"}]


def test_home_assistant_tool_results_without_ids(http: httpx.Client, vllm: VLLMStandin) -> None:
    body = {
        "model": "tiny",
        "stream": False,
        "messages": [
            {"role": "user", "content": "lights?"},
            {
                "role": "assistant",
                "content": "",
                "thinking": "call both",
                "tool_calls": [
                    {"function": {"name": "kitchen", "arguments": {}}},
                    {"function": {"name": "hall", "arguments": {"on": True}}},
                ],
            },
            {"role": "tool", "content": "kitchen on"},
            {"role": "tool", "content": "hall off"},
        ],
    }
    assert http.post("/api/chat", json=body).status_code == 200
    history = vllm.requests[-1]["body"]["messages"]
    ids = [c["id"] for c in history[1]["tool_calls"]]
    assert [m["tool_call_id"] for m in history[2:]] == ids
    assert [m["name"] for m in history[2:]] == ["kitchen", "hall"]
    assert history[1]["tool_calls"][1]["function"]["arguments"] == '{"on":true}'


@pytest.mark.parametrize("stream", [True, False])
def test_tool_call_cut_off_by_the_token_limit_ends_with_length(
    client: ollama.Client, vllm: VLLMStandin, stream: bool
) -> None:
    # As Ollama answers it, streamed or not: done_reason "length" with what was generated (the
    # call's text so far), never a 500 nor an error.
    vllm.script = Script(
        tokens=[], tool_calls=[{"name": "get_weather", "arguments": '{"city": "Par'}], tool_finish_reason="length"
    )
    messages = [{"role": "user", "content": "x"}]
    if stream:
        parts = list(client.chat(model="tiny", messages=messages, tools=[get_weather], stream=True))
        text, last = "".join(p.message.content or "" for p in parts), parts[-1]
        assert not any(p.message.tool_calls for p in parts)
    else:
        last = client.chat(model="tiny", messages=messages, tools=[get_weather])
        text = last.message.content or ""
        assert not last.message.tool_calls
    assert text == '<tool_call>{"name": "get_weather", "arguments": {"city": "Par'
    assert last.done and last.done_reason == "length"


def test_unparsable_tool_call_with_normal_finish_becomes_text(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(tokens=[], tool_calls=[{"name": "get_weather", "arguments": "not json"}])
    parts = list(
        client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], tools=[get_weather], stream=True)
    )
    text = "".join(p.message.content for p in parts)
    assert "<tool_call>" in text and "not json" in text
    assert parts[-1].done


class Person(BaseModel):
    name: str
    age: int


def test_structured_output_schema(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(tokens=['{"name": "Ann", ', '"age": 3}'])
    resp = client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], format=Person.model_json_schema())
    assert Person.model_validate_json(resp.message.content) == Person(name="Ann", age=3)
    rf = vllm.requests[-1]["body"]["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "Person"
    assert rf["json_schema"]["schema"] == Person.model_json_schema()
    assert not any(k.startswith("guided_") for k in vllm.requests[-1]["body"])
    gen = client.generate(model="tiny", prompt="x", format="json", stream=True)
    assert "".join(p.response for p in gen) == '{"name": "Ann", "age": 3}'
    assert vllm.requests[-1]["body"]["response_format"] == {"type": "json_object"}


def test_invalid_schema_reason_from_vllm(client: ollama.Client, vllm: VLLMStandin) -> None:
    vllm.script = Script(error_status=400, error_message="Invalid JSON schema: 'type' must be a string")
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], format={"type": 5})
    assert info.value.status_code == 400 and "Invalid JSON schema" in info.value.error


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_thinking_streamed_apart_from_content(client: ollama.Client, vllm: VLLMStandin, field: str) -> None:
    vllm.script = Script(tokens=["Answer."], reasoning=["Let me ", "think."], reasoning_field=field)
    parts = list(client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think."
    assert "".join(p.message.content for p in parts) == "Answer."
    assert vllm.requests[-1]["body"]["chat_template_kwargs"] == {"enable_thinking": True}
    whole = client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], think=True)
    assert whole.message.thinking == "Let me think." and whole.message.content == "Answer."
    gen = client.generate(model="tiny", prompt="x", think="high")
    assert gen.thinking == "Let me think." and gen.response == "Answer."
    sent = vllm.requests[-1]["body"]
    assert sent["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "high"}
    assert sent["reasoning_effort"] == "high"
    client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], think=False)
    assert vllm.requests[-1]["body"]["chat_template_kwargs"] == {"enable_thinking": False}


def test_logprobs(http: httpx.Client, vllm: VLLMStandin) -> None:
    r = http.post(
        "/api/generate", json={"model": "tiny", "prompt": "x", "logprobs": True, "top_logprobs": 2, "stream": False}
    )
    assert r.status_code == 200
    sent = vllm.requests[-1]["body"]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()


def test_images_to_multimodal_vllm_model(tmp_path: Path, vllm_server, vision_server) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: see\n    upstream: tiny\n    capabilities: [completion, vision]\n")
    vllm = vllm_server[0]
    vllm.reset()
    settings = make_settings(vllm_server[1].url, vision_server[1].url, adapter_models_file=path)
    with running_gateway(settings) as url:
        c = ollama.Client(host=url)
        c.chat(model="see", messages=[{"role": "user", "content": "what?", "images": [PNG]}])
        content = vllm.requests[-1]["body"]["messages"][0]["content"]
        assert content == [
            {"type": "text", "text": "what?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ]
        c.generate(model="see", prompt="describe", images=[PNG])
        assert vllm.requests[-1]["body"]["messages"][-1]["content"][1]["type"] == "image_url"
        r = httpx.post(
            url + "/api/chat",
            content=orjson.dumps(
                {"model": "see", "messages": [{"role": "user", "content": "x", "images": ["%%%not-base64"]}]}
            ),
        )
        assert r.status_code == 400 and "base64" in r.json()["error"]
        # Catalog says what a model cannot do: tools on a model without the capability is a 400, as in Ollama.
        r = httpx.post(
            url + "/api/chat",
            json={
                "model": "see",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
        )
        assert r.status_code == 400 and "does not support tools" in r.json()["error"]


def test_request_defaults_force_tool_choice(tmp_path: Path, vllm_server, vision_server) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - name: extractor\n    upstream: tiny\n"
        "    request_defaults: {tool_choice: required, parallel_tool_calls: false}\n"
    )
    vllm = vllm_server[0]
    vllm.reset()
    with running_gateway(make_settings(vllm_server[1].url, vision_server[1].url, adapter_models_file=path)) as url:
        c = ollama.Client(host=url)
        c.chat(model="extractor", messages=[{"role": "user", "content": "x"}], tools=[get_weather])
        assert vllm.requests[-1]["body"]["tool_choice"] == "required"
        c.chat(model="extractor", messages=[{"role": "user", "content": "x"}])
        assert "tool_choice" not in vllm.requests[-1]["body"]  # no tools, no tool_choice (vLLM would 400)
