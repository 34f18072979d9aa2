"""adapter.translate.requests: Ollama chat/generate request dicts -> OpenAI (vLLM) request dicts.

References: shared/ollama-api.md §1.6, §1.7, §2.4 (Ollama's own Ollama->OpenAI translation) and §4;
shared/vllm-openai.md §1 and the §4 traps (tools [] -> 400, stream_options without stream -> 400,
/v1/completions max_tokens default 16, tool_calls need id/type/string arguments).
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from adapter.errors import BadRequest
from adapter.translate.requests import (
    image_to_data_url,
    ollama_chat_to_openai,
    ollama_generate_to_openai_chat,
    ollama_generate_to_openai_completion,
    ollama_messages_to_openai,
    response_format_for,
    sniff_image_mime,
    thinking_controls_for,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00\x30\x01\x00\x9d\x01\x2a"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


WEATHER_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
TIME_CALL = {"function": {"name": "get_time", "arguments": {"tz": "Europe/Paris"}}}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "default": "Paris", "minLength": 1}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]


def call_ids(message: dict) -> list[str]:
    return [c["id"] for c in message["tool_calls"]]


# --- plain messages -------------------------------------------------------------------------------


def test_ollama_messages_to_openai_system_user_assistant_pass_through():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert ollama_messages_to_openai(messages) == messages


def test_ollama_messages_to_openai_role_is_lower_cased():
    # Ollama's Message.UnmarshalJSON lower-cases role.
    out = ollama_messages_to_openai([{"role": "USER", "content": "Hi"}, {"role": "Assistant", "content": "Yo"}])
    assert [m["role"] for m in out] == ["user", "assistant"]


def test_ollama_messages_to_openai_missing_content_becomes_empty_string():
    # ollama-python drops empty fields: an assistant message with content "" arrives without content.
    out = ollama_messages_to_openai([{"role": "user", "content": "Hi"}, {"role": "assistant"}])
    assert out[1] == {"role": "assistant", "content": ""}


def test_ollama_messages_to_openai_null_content_becomes_empty_string():
    out = ollama_messages_to_openai([{"role": "user", "content": None}])
    assert out == [{"role": "user", "content": ""}]


def test_ollama_messages_to_openai_drops_ollama_only_message_fields():
    out = ollama_messages_to_openai([{"role": "user", "content": "Hi", "images": [], "tool_name": None}])
    assert out == [{"role": "user", "content": "Hi"}]


def test_ollama_messages_to_openai_does_not_mutate_input():
    messages = [{"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]}, {"role": "tool", "content": "20"}]
    snapshot = json.loads(json.dumps(messages))
    ollama_messages_to_openai(messages)
    assert messages == snapshot


# --- assistant tool calls in the history ----------------------------------------------------------


def test_ollama_messages_to_openai_assistant_tool_calls_object_args_become_json_string():
    out = ollama_messages_to_openai(
        [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]}]
    )
    call = out[1]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert isinstance(call["id"], str)
    assert call["id"]


def test_ollama_messages_to_openai_assistant_tool_call_args_keep_order_and_unicode():
    args = {"z": 1, "a": {"nested": ["x", None, True]}, "city": "Zürich <&>"}
    out = ollama_messages_to_openai(
        [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": args}}]}]
    )
    arguments = out[0]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == args
    assert list(json.loads(arguments)) == ["z", "a", "city"]


def test_ollama_messages_to_openai_assistant_tool_call_string_args_are_kept():
    # A client that already speaks OpenAI's shape sends a JSON string.
    call = {"function": {"name": "f", "arguments": '{"a": 1}'}}
    out = ollama_messages_to_openai([{"role": "assistant", "tool_calls": [call]}])
    assert json.loads(out[0]["tool_calls"][0]["function"]["arguments"]) == {"a": 1}


def test_ollama_messages_to_openai_assistant_tool_call_without_arguments_gets_empty_object():
    out = ollama_messages_to_openai([{"role": "assistant", "tool_calls": [{"function": {"name": "now"}}]}])
    assert json.loads(out[0]["tool_calls"][0]["function"]["arguments"]) == {}


def test_ollama_messages_to_openai_assistant_tool_calls_with_missing_content():
    # The Python client drops content "" -> the assistant turn has only tool_calls.
    out = ollama_messages_to_openai([{"role": "assistant", "tool_calls": [WEATHER_CALL]}])
    assert out[0]["role"] == "assistant"
    assert out[0].get("content") in ("", None)
    assert len(out[0]["tool_calls"]) == 1


def test_ollama_messages_to_openai_assistant_tool_call_id_is_kept():
    call = {"id": "call_ab12cd34", **WEATHER_CALL}
    out = ollama_messages_to_openai([{"role": "assistant", "tool_calls": [call]}])
    assert call_ids(out[0]) == ["call_ab12cd34"]


def test_ollama_messages_to_openai_assistant_tool_call_ids_are_unique_in_history():
    history = [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL, TIME_CALL]},
        {"role": "tool", "content": "20C"},
        {"role": "tool", "content": "12:00"},
        {"role": "user", "content": "And again?"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
    ]
    out = ollama_messages_to_openai(history)
    ids = call_ids(out[1]) + call_ids(out[5])
    assert len(set(ids)) == 3


def test_ollama_messages_to_openai_assistant_tool_call_ids_are_stable_across_turns():
    # Same history -> same ids, and appending turns does not change earlier ids (prefix caching).
    turn1 = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": "20C"},
    ]
    turn2 = [*turn1, {"role": "assistant", "content": "It is 20C."}, {"role": "user", "content": "Time?"}]
    first = ollama_messages_to_openai(turn1)
    again = ollama_messages_to_openai(turn1)
    later = ollama_messages_to_openai(turn2)
    assert first == again
    assert later[: len(first)] == first


# --- tool results ---------------------------------------------------------------------------------


def test_ollama_messages_to_openai_tool_result_with_tool_call_id_is_kept():
    history = [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", **WEATHER_CALL}]},
        {"role": "tool", "content": "20C", "tool_call_id": "call_1", "tool_name": "get_weather"},
    ]
    out = ollama_messages_to_openai(history)
    assert out[1]["role"] == "tool"
    assert out[1]["tool_call_id"] == "call_1"
    assert out[1]["content"] == "20C"


def test_ollama_messages_to_openai_tool_result_tool_name_becomes_name():
    # Ollama's llama_server translation: name <- tool_name.
    history = [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", **WEATHER_CALL}]},
        {"role": "tool", "content": "20C", "tool_call_id": "call_1", "tool_name": "get_weather"},
    ]
    assert ollama_messages_to_openai(history)[1]["name"] == "get_weather"


def test_ollama_messages_to_openai_tool_result_with_tool_name_only_matches_call():
    history = [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL, TIME_CALL]},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "20C", "tool_name": "get_weather"},
    ]
    out = ollama_messages_to_openai(history)
    weather_id, time_id = call_ids(out[1])
    assert out[2]["tool_call_id"] == time_id
    assert out[3]["tool_call_id"] == weather_id


def test_ollama_messages_to_openai_tool_result_without_id_matches_call():
    # Home Assistant: tool results carry neither tool_call_id nor tool_name.
    history = [
        {"role": "user", "content": "Turn on the light"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": {"name": "lamp"}}}],
        },
        {"role": "tool", "content": '{"success": true}'},
    ]
    out = ollama_messages_to_openai(history)
    assert len(out) == 3  # never dropped
    assert out[2]["role"] == "tool"
    assert out[2]["tool_call_id"] == call_ids(out[1])[0]
    assert out[2]["content"] == '{"success": true}'


def test_ollama_messages_to_openai_tool_result_without_id_gets_call_name():
    history = [
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": "20C"},
    ]
    assert ollama_messages_to_openai(history)[1].get("name") == "get_weather"


def test_ollama_messages_to_openai_tool_results_without_id_match_parallel_calls_in_order():
    calls = [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_time", "arguments": {"tz": "UTC"}}},
        {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
    ]
    history = [
        {"role": "user", "content": "?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "Paris: 20C"},
        {"role": "tool", "content": "12:00"},
        {"role": "tool", "content": "Tokyo: 25C"},
    ]
    out = ollama_messages_to_openai(history)
    assert [m["tool_call_id"] for m in out[2:]] == call_ids(out[1])


def test_ollama_messages_to_openai_tool_results_same_name_match_parallel_calls_in_order():
    calls = [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
    ]
    history = [
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "Paris: 20C", "tool_name": "get_weather"},
        {"role": "tool", "content": "Tokyo: 25C", "tool_name": "get_weather"},
    ]
    out = ollama_messages_to_openai(history)
    assert [m["tool_call_id"] for m in out[1:]] == call_ids(out[0])


def test_ollama_messages_to_openai_tool_results_with_ids_in_reverse_order_keep_ids():
    history = [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "a", **WEATHER_CALL}, {"id": "b", **TIME_CALL}]},
        {"role": "tool", "content": "12:00", "tool_call_id": "b"},
        {"role": "tool", "content": "20C", "tool_call_id": "a"},
    ]
    out = ollama_messages_to_openai(history)
    assert [m["tool_call_id"] for m in out[1:]] == ["b", "a"]
    assert [m.get("name") for m in out[1:]] == ["get_time", "get_weather"]


def test_ollama_messages_to_openai_tool_results_without_id_over_two_turns_match_their_turn():
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": "20C"},
        {"role": "assistant", "content": "20C."},
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "", "tool_calls": [TIME_CALL]},
        {"role": "tool", "content": "12:00"},
    ]
    out = ollama_messages_to_openai(history)
    assert out[2]["tool_call_id"] == call_ids(out[1])[0]
    assert out[6]["tool_call_id"] == call_ids(out[5])[0]
    assert out[2]["tool_call_id"] != out[6]["tool_call_id"]


def test_ollama_messages_to_openai_tool_result_without_any_call_still_has_an_id():
    out = ollama_messages_to_openai([{"role": "user", "content": "x"}, {"role": "tool", "content": "orphan"}])
    assert out[1]["role"] == "tool"
    assert isinstance(out[1]["tool_call_id"], str)
    assert out[1]["tool_call_id"]


# --- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (GIF, "image/gif"),
        (b"GIF87a\x00\x00", "image/gif"),
    ],
)
def test_sniff_image_mime_known_formats(data, mime):
    assert sniff_image_mime(data) == mime


def test_sniff_image_mime_unknown_falls_back_to_jpeg():
    # Ollama falls back to image/jpeg.
    assert sniff_image_mime(b"not an image at all") == "image/jpeg"


@pytest.mark.parametrize(
    ("data", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp"), (GIF, "image/gif")]
)
def test_image_to_data_url_sniffs_mime(data, mime):
    assert image_to_data_url(b64(data)) == f"data:{mime};base64,{b64(data)}"


def test_image_to_data_url_accepts_data_url_input():
    url = image_to_data_url(f"data:image/png;base64,{b64(PNG)}")
    assert url == f"data:image/png;base64,{b64(PNG)}"


@pytest.mark.parametrize("bad", ["not base64!!", "iVBORw0KGgo=garbage", "abc"])
def test_image_to_data_url_invalid_base64_is_bad_request(bad):
    with pytest.raises(BadRequest) as info:
        image_to_data_url(bad)
    assert info.value.status == 400


def test_ollama_messages_to_openai_user_images_become_image_url_parts():
    out = ollama_messages_to_openai([{"role": "user", "content": "What is this?", "images": [b64(PNG), b64(JPEG)]}])
    assert out == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(JPEG)}"}},
            ],
        }
    ]


def test_ollama_messages_to_openai_image_without_text_has_no_text_part():
    out = ollama_messages_to_openai([{"role": "user", "content": "", "images": [b64(WEBP)]}])
    assert out[0]["content"] == [{"type": "image_url", "image_url": {"url": f"data:image/webp;base64,{b64(WEBP)}"}}]


def test_ollama_messages_to_openai_invalid_image_is_bad_request():
    with pytest.raises(BadRequest):
        ollama_messages_to_openai([{"role": "user", "content": "x", "images": ["%%%not-base64%%%"]}])


# --- format ---------------------------------------------------------------------------------------


def test_response_format_for_json_is_json_object():
    assert response_format_for("json") == {"type": "json_object"}


@pytest.mark.parametrize("fmt", [None, ""])
def test_response_format_for_empty_is_none(fmt):
    assert response_format_for(fmt) is None


def test_response_format_for_schema_is_json_schema_with_name():
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    out = response_format_for(schema)
    assert out["type"] == "json_schema"
    assert out["json_schema"]["schema"] == schema
    # vLLM's JsonSchemaResponseFormat requires `name`.
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", out["json_schema"]["name"])


def test_response_format_for_schema_title_is_sanitised_into_name():
    out = response_format_for({"title": "Weather Report (v2)!", "type": "object"})
    name = out["json_schema"]["name"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)
    assert "Weather" in name


def test_response_format_for_schema_long_title_is_cut_to_64():
    out = response_format_for({"title": "x" * 300, "type": "object"})
    assert 1 <= len(out["json_schema"]["name"]) <= 64


def test_response_format_for_schema_title_of_only_symbols_falls_back_to_a_name():
    out = response_format_for({"title": "!!! ???", "type": "object"})
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", out["json_schema"]["name"])


@pytest.mark.parametrize("fmt", ["yaml", "JSON ", 5, ["json"], True])
def test_response_format_for_invalid_is_bad_request(fmt):
    with pytest.raises(BadRequest) as info:
        response_format_for(fmt)
    assert "invalid format" in info.value.message


def test_ollama_chat_to_openai_format_schema_never_uses_guided_json():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = ollama_chat_to_openai(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "format": schema}, "tiny"
    )
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == schema
    assert not [k for k in body if k.startswith("guided_")]
    assert "format" not in body


def test_ollama_chat_to_openai_format_json_is_json_object():
    body = ollama_chat_to_openai({"messages": [{"role": "user", "content": "x"}], "format": "json"}, "tiny")
    assert body["response_format"] == {"type": "json_object"}
    assert not [k for k in body if k.startswith("guided_")]


# --- think ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("think", [True, False])
def test_thinking_controls_for_bool_switches_chat_template(think):
    out = thinking_controls_for(think)
    assert out["chat_template_kwargs"]["enable_thinking"] is think
    assert "reasoning_effort" not in out


def test_thinking_controls_for_absent_leaves_model_default():
    assert thinking_controls_for(None) == {}


@pytest.mark.parametrize("level", ["low", "medium", "high"])
def test_thinking_controls_for_level_enables_thinking_with_effort(level):
    out = thinking_controls_for(level)
    assert out["chat_template_kwargs"]["enable_thinking"] is True
    efforts = {out.get("reasoning_effort"), out["chat_template_kwargs"].get("reasoning_effort")}
    assert level in efforts


def test_thinking_controls_for_max_level_enables_thinking():
    out = thinking_controls_for("max")
    assert out["chat_template_kwargs"]["enable_thinking"] is True


@pytest.mark.parametrize("think", ["extreme", "true", "", "HIGH", 1, 0, ["high"], {"level": "high"}])
def test_thinking_controls_for_invalid_is_bad_request(think):
    with pytest.raises(BadRequest) as info:
        thinking_controls_for(think)
    assert info.value.status == 400


def test_ollama_chat_to_openai_think_false_sets_enable_thinking_false():
    body = ollama_chat_to_openai({"messages": [{"role": "user", "content": "x"}], "think": False}, "tiny")
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "think" not in body


def test_ollama_chat_to_openai_without_think_sends_no_chat_template_kwargs():
    body = ollama_chat_to_openai({"messages": [{"role": "user", "content": "x"}]}, "tiny")
    assert "chat_template_kwargs" not in body


# --- chat body ------------------------------------------------------------------------------------


def chat(req: dict, extra: dict | None = None) -> dict:
    return ollama_chat_to_openai(
        {"model": "tiny:latest", "messages": [{"role": "user", "content": "Hi"}], **req}, "tiny", extra
    )


def test_ollama_chat_to_openai_uses_upstream_model():
    body = chat({})
    assert body["model"] == "tiny"
    assert body["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("stream", [True, False, None])
def test_ollama_chat_to_openai_always_asks_vllm_for_a_stream_with_usage(stream):
    # A whole answer is the stream folded together by the gateway: the same first-token timing
    # (prompt_eval_duration) and timeouts either way. vLLM: stream_options needs stream:true.
    body = chat({"stream": stream})
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_ollama_chat_to_openai_empty_tools_are_dropped():
    # vLLM 0.32 rejects "tools": [] with 400; ollama-python always sends it.
    assert "tools" not in chat({"tools": []})
    assert "tools" not in chat({"tools": None})


def test_ollama_chat_to_openai_tools_are_passed_through_raw():
    # Ollama's Go types drop JSON-schema keywords (default, minLength, additionalProperties...); we must not.
    body = chat({"tools": TOOLS})
    assert body["tools"] == TOOLS


def test_ollama_chat_to_openai_options_become_sampling_params():
    body = chat({"options": {"num_predict": 32, "temperature": 0.1, "num_ctx": 4096, "seed": -1}})
    assert body["max_tokens"] == 32
    assert body["temperature"] == 0.1
    assert "seed" not in body
    assert "num_ctx" not in body
    assert "options" not in body


def test_ollama_chat_to_openai_without_num_predict_sets_no_max_tokens_limit():
    # Chat completions without max_tokens run to max_model_len, like Ollama's -1.
    body = chat({"options": {"num_predict": -1}})
    assert body.get("max_tokens") is None


def test_ollama_chat_to_openai_ollama_only_fields_are_not_forwarded():
    body = chat({"keep_alive": "5m", "truncate": True, "shift": True, "format": "", "think": None})
    for key in ("keep_alive", "truncate", "shift", "format", "think", "options", "images"):
        assert key not in body


def test_ollama_chat_to_openai_logprobs_with_top_logprobs():
    body = chat({"logprobs": True, "top_logprobs": 3})
    assert body["logprobs"] is True
    assert body["top_logprobs"] == 3


def test_ollama_chat_to_openai_no_logprobs_by_default():
    body = chat({"logprobs": False})
    assert "logprobs" not in body
    assert "top_logprobs" not in body


def test_ollama_chat_to_openai_request_defaults_fill_in_but_request_wins():
    body = chat(
        {"tools": TOOLS, "options": {"temperature": 0.3}}, extra={"temperature": 0.9, "tool_choice": "required"}
    )
    assert body["temperature"] == 0.3
    assert body["tool_choice"] == "required"


def test_ollama_chat_to_openai_request_defaults_tool_keys_dropped_without_tools():
    # vLLM rejects tool_choice without tools.
    body = chat({"tools": []}, extra={"tool_choice": "required", "parallel_tool_calls": False, "top_k": 5})
    assert "tool_choice" not in body
    assert "parallel_tool_calls" not in body
    assert body["top_k"] == 5


def test_ollama_chat_to_openai_does_not_mutate_request():
    req = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [], "options": {"stop": "x"}}
    snapshot = json.loads(json.dumps(req))
    ollama_chat_to_openai(req, "tiny")
    assert req == snapshot


# --- generate -> chat -----------------------------------------------------------------------------


def test_ollama_generate_to_openai_chat_system_then_user_prompt():
    body = ollama_generate_to_openai_chat({"model": "m", "prompt": "Why?", "system": "Be brief."}, "tiny")
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    assert body["model"] == "tiny"
    assert "prompt" not in body
    assert "system" not in body


def test_ollama_generate_to_openai_chat_without_system_has_only_user():
    body = ollama_generate_to_openai_chat({"model": "m", "prompt": "Why?"}, "tiny")
    assert body["messages"] == [{"role": "user", "content": "Why?"}]
    assert body["stream_options"] == {"include_usage": True}


def test_ollama_generate_to_openai_chat_images_go_to_the_user_message():
    body = ollama_generate_to_openai_chat({"prompt": "What?", "images": [b64(PNG)]}, "tiny")
    assert body["messages"][-1]["content"] == [
        {"type": "text", "text": "What?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
    ]


def test_ollama_generate_to_openai_chat_options_format_think_apply():
    body = ollama_generate_to_openai_chat(
        {"prompt": "x", "options": {"num_predict": 5}, "format": "json", "think": True}, "tiny"
    )
    assert body["max_tokens"] == 5
    assert body["response_format"] == {"type": "json_object"}
    assert body["chat_template_kwargs"]["enable_thinking"] is True
    assert "tools" not in body


def test_ollama_generate_to_openai_chat_request_defaults_without_tool_keys():
    body = ollama_generate_to_openai_chat({"prompt": "x"}, "tiny", {"tool_choice": "auto", "min_p": 0.1})
    assert "tool_choice" not in body
    assert body["min_p"] == 0.1


# --- raw generate -> completions ------------------------------------------------------------------


def test_ollama_generate_to_openai_completion_max_tokens_none_by_default():
    # vLLM's /v1/completions stops after 16 tokens unless max_tokens is given (null = no limit).
    body = ollama_generate_to_openai_completion({"prompt": "Once upon", "raw": True}, "tiny")
    assert "max_tokens" in body
    assert body["max_tokens"] is None
    assert body["prompt"] == "Once upon"
    assert body["model"] == "tiny"
    assert "messages" not in body


@pytest.mark.parametrize("num_predict", [-1, -2])
def test_ollama_generate_to_openai_completion_unlimited_num_predict_is_null(num_predict):
    body = ollama_generate_to_openai_completion({"prompt": "x", "options": {"num_predict": num_predict}}, "tiny")
    assert body["max_tokens"] is None


def test_ollama_generate_to_openai_completion_num_predict_is_max_tokens():
    body = ollama_generate_to_openai_completion({"prompt": "x", "options": {"num_predict": 20}}, "tiny")
    assert body["max_tokens"] == 20


def test_ollama_generate_to_openai_completion_always_streams_with_usage():
    body = ollama_generate_to_openai_completion({"prompt": "x", "stream": False}, "tiny")
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_ollama_generate_to_openai_completion_prompt_override_for_fim():
    body = ollama_generate_to_openai_completion(
        {"prompt": "def f(", "suffix": "\n    return x"}, "coder", prompt="<|fim_prefix|>def f(<|fim_suffix|>"
    )
    assert body["prompt"] == "<|fim_prefix|>def f(<|fim_suffix|>"
    assert "suffix" not in body  # vLLM: "suffix is not currently supported"


def test_ollama_generate_to_openai_completion_logprobs_is_an_int():
    body = ollama_generate_to_openai_completion({"prompt": "x", "logprobs": True, "top_logprobs": 5}, "tiny")
    assert type(body["logprobs"]) is int
    assert body["logprobs"] == 5
    assert "top_logprobs" not in body


def test_ollama_generate_to_openai_completion_logprobs_without_top_is_an_int():
    body = ollama_generate_to_openai_completion({"prompt": "x", "logprobs": True}, "tiny")
    assert type(body["logprobs"]) is int
    assert body["logprobs"] >= 0
    assert "top_logprobs" not in body


def test_ollama_generate_to_openai_completion_format_becomes_response_format():
    body = ollama_generate_to_openai_completion({"prompt": "x", "format": {"type": "object"}}, "tiny")
    assert body["response_format"]["type"] == "json_schema"
    assert not [k for k in body if k.startswith("guided_")]


def test_image_to_data_url_accepts_base64_with_line_breaks():
    # Go's encoding/json decodes []byte with base64.StdEncoding, which ignores \r and \n, so Ollama
    # accepts line-wrapped base64 (e.g. Python's base64.encodebytes). vLLM decodes the data URL strictly,
    # so what we forward must be clean base64 of the same bytes.
    wrapped = base64.encodebytes(PNG * 4).decode()
    assert "\n" in wrapped
    url = image_to_data_url(wrapped)
    mime, _, payload = url.partition(";base64,")
    assert mime == "data:image/png"
    assert base64.b64decode(payload, validate=True) == PNG * 4
