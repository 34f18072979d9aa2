"""adapter.translate.responses: vLLM chunks/responses -> Ollama chunks/responses.

The upstream chunks below copy real vLLM 0.32 streams (shared/real-vllm-on-cpu.md §4-5), null
fields included. The expected Ollama shapes come from shared/ollama-api.md §0, §1.6, §1.7, §2.4.
"""

from __future__ import annotations

import re

import pytest

from adapter.translate.responses import (
    StreamTranslator,
    Timing,
    UpstreamStreamError,
    chat_logprobs_to_ollama,
    completion_logprobs_to_ollama,
    done_reason_for,
    error_message_of,
    final_chunk,
    final_metrics,
    load_response,
    rfc3339_utc,
    whole_response,
)

T = "2026-11-23T16:18:12.345Z"
CHAT_ID = "chatcmpl-8594a499510f7e82"
METRIC_KEYS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]
CHAT_FINAL_KEYS = ["model", "created_at", "message", "done", "done_reason", *METRIC_KEYS]
GENERATE_FINAL_KEYS = ["model", "created_at", "response", "done", "done_reason", *METRIC_KEYS]
TIMING = Timing(start=1_000, upstream=3_000, first=10_000, end=50_000)


# --- real vLLM 0.32 chunk builders ----------------------------------------------------------------


def role_chunk() -> dict:
    return {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": 1795441092,
        "model": "tiny",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ],
        "prompt_token_ids": None,
        "prompt_text": None,
    }


def delta_chunk(delta: dict, finish_reason: str | None = None, stop_reason=None, logprobs=None) -> dict:
    choice: dict = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    if finish_reason is not None:
        choice["stop_reason"] = stop_reason
    choice["token_ids"] = None
    return {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": 1795441092,
        "model": "tiny",
        "choices": [choice],
    }


def content_chunk(text: str, finish_reason: str | None = None, stop_reason=None) -> dict:
    return delta_chunk({"content": text}, finish_reason, stop_reason)


def usage_chunk(prompt: int, completion: int) -> dict:
    return {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": 1795441092,
        "model": "tiny",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion},
        "system_fingerprint": "vllm-0.32.0-6adf41a4",
    }


def tool_start(index: int, call_id: str, name: str) -> dict:
    return delta_chunk(
        {
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "index": index, "function": {"name": name}}],
        }
    )


def tool_args(index: int, fragment: str) -> dict:
    return delta_chunk({"content": None, "tool_calls": [{"index": index, "function": {"arguments": fragment}}]})


def text_chunk(text: str, finish_reason: str | None = None) -> dict:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1795441092,
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        ],
    }


def run(chunks: list[dict], target: str = "chat", logprobs: bool = False, timing: Timing = TIMING) -> list[dict]:
    translator = StreamTranslator("tiny:latest", target, logprobs)
    out: list[dict] = []
    for chunk in chunks:
        out.extend(translator.feed(chunk, T))
    out.extend(translator.final(T, timing))
    return out


def contents(out: list[dict]) -> str:
    return "".join(c["message"]["content"] for c in out)


def all_tool_calls(out: list[dict]) -> list[dict]:
    return [call for c in out for call in c["message"].get("tool_calls", [])]


# Three parts of the real streamed tool call of real-vllm-on-cpu.md §5, whose concatenation is
# {"city":"}nceunc am5D",  \n"unit" :\n "celsius"}
WEATHER_FRAGMENTS = ['{"', "c", 'ity":"}nceunc', " am5D", '",  \n"unit"', " :\n ", '"celsius', '"}']
WEATHER_ARGS = {"city": "}nceunc am5D", "unit": "celsius"}
WEATHER_ID = "chatcmpl-tool-ad67bd1475b61394"


# --- StreamTranslator: text -----------------------------------------------------------------------


def test_stream_translator_length_finish_on_last_token():
    # max_tokens 3: the finish reason rides on the last content chunk (real SSE bytes, §4).
    out = run(
        [role_chunk(), content_chunk("Th"), content_chunk("orld"), content_chunk(" tin", "length"), usage_chunk(12, 3)]
    )
    assert out[:3] == [
        {"model": "tiny:latest", "created_at": T, "message": {"role": "assistant", "content": "Th"}, "done": False},
        {"model": "tiny:latest", "created_at": T, "message": {"role": "assistant", "content": "orld"}, "done": False},
        {"model": "tiny:latest", "created_at": T, "message": {"role": "assistant", "content": " tin"}, "done": False},
    ]
    final = out[3]
    assert len(out) == 4
    assert final["done"] is True
    assert final["done_reason"] == "length"
    assert final["prompt_eval_count"] == 12
    assert final["eval_count"] == 3
    assert final["message"] == {"role": "assistant", "content": ""}


def test_stream_translator_chunk_key_order_matches_ollama():
    out = run([role_chunk(), content_chunk("Hi", "length")])
    assert list(out[0]) == ["model", "created_at", "message", "done"]
    assert list(out[0]["message"]) == ["role", "content"]


def test_stream_translator_role_chunk_yields_nothing():
    translator = StreamTranslator("tiny", "chat")
    assert translator.feed(role_chunk(), T) == []


def test_stream_translator_eos_stop_in_separate_empty_delta():
    # EOS: a separate chunk with delta {} and an integer stop_reason.
    chunks = [role_chunk(), content_chunk("Hello"), delta_chunk({}, "stop", stop_reason=0), usage_chunk(9, 2)]
    translator = StreamTranslator("tiny", "chat")
    outputs = [translator.feed(c, T) for c in chunks]
    assert outputs[2] == []  # the finish chunk itself produces no line
    assert outputs[3] == []  # neither does the usage chunk
    final = translator.final(T, TIMING)
    assert final[-1]["done_reason"] == "stop"
    assert final[-1]["eval_count"] == 2


def test_stream_translator_stop_string_stop_reason_is_a_string():
    out = run([role_chunk(), content_chunk("Th"), delta_chunk({}, "stop", stop_reason="orld"), usage_chunk(12, 2)])
    assert contents(out) == "Th"
    assert out[-1]["done_reason"] == "stop"


def test_stream_translator_eval_count_from_usage_not_chunk_count():
    # Stop strings make vLLM hold text back: one chunk may carry several tokens.
    out = run([role_chunk(), content_chunk("Hello there, friend", "stop", stop_reason="!"), usage_chunk(7, 5)])
    assert out[-1]["eval_count"] == 5
    assert out[-1]["prompt_eval_count"] == 7


def test_stream_translator_without_usage_counts_are_ints():
    out = run([role_chunk(), content_chunk("x", "length")])
    final = out[-1]
    for key in METRIC_KEYS:
        assert type(final[key]) is int


def test_stream_translator_continuous_usage_last_one_wins():
    first = content_chunk("a")
    first["usage"] = {"prompt_tokens": 4, "total_tokens": 5, "completion_tokens": 1}
    second = content_chunk("b", "length")
    second["usage"] = {"prompt_tokens": 4, "total_tokens": 6, "completion_tokens": 2}
    out = run([role_chunk(), first, second])
    assert contents(out) == "ab"
    assert out[-1]["eval_count"] == 2


def test_stream_translator_generate_target_uses_response():
    out = run(
        [role_chunk(), content_chunk("Th"), content_chunk("orld", "length"), usage_chunk(12, 2)], target="generate"
    )
    assert out[0] == {"model": "tiny:latest", "created_at": T, "response": "Th", "done": False}
    assert list(out[-1]) == GENERATE_FINAL_KEYS
    assert out[-1]["response"] == ""
    assert out[-1]["done_reason"] == "length"


def test_stream_translator_text_completion_chunks_for_raw_generate():
    chunks = [text_chunk("Once"), text_chunk(" upon"), text_chunk(" a", "length"), usage_chunk(3, 3)]
    out = run(chunks, target="generate")
    assert [c["response"] for c in out[:-1]] == ["Once", " upon", " a"]
    assert out[-1]["done"] is True
    assert out[-1]["done_reason"] == "length"
    assert out[-1]["eval_count"] == 3


# --- StreamTranslator: reasoning ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_stream_translator_reasoning_delta_becomes_thinking(field):
    out = run([role_chunk(), delta_chunk({field: "Let me think"}), content_chunk("42", "stop", 0)])
    assert out[0]["message"] == {"role": "assistant", "content": "", "thinking": "Let me think"}
    assert out[0]["done"] is False
    assert out[1]["message"] == {"role": "assistant", "content": "42"}


def test_stream_translator_reasoning_for_generate_is_top_level_thinking():
    out = run([role_chunk(), delta_chunk({"reasoning": "hmm"}), content_chunk("ok", "stop", 0)], target="generate")
    assert out[0] == {"model": "tiny:latest", "created_at": T, "response": "", "thinking": "hmm", "done": False}
    assert list(out[0]) == ["model", "created_at", "response", "thinking", "done"]


def test_stream_translator_null_reasoning_fields_are_ignored():
    out = run([role_chunk(), delta_chunk({"content": "x", "reasoning": None, "reasoning_content": None}, "length")])
    assert "thinking" not in out[0]["message"]


# --- StreamTranslator: tool calls -----------------------------------------------------------------


def weather_stream(finish_reason: str = "stop") -> list[dict]:
    return [
        role_chunk(),
        tool_start(0, WEATHER_ID, "get_weather"),
        *(tool_args(0, f) for f in WEATHER_FRAGMENTS),
        delta_chunk({}, finish_reason, stop_reason=0),
        usage_chunk(528, 52),
    ]


def test_stream_translator_tool_call_split_over_many_chunks():
    translator = StreamTranslator("tiny", "chat")
    chunks = weather_stream("tool_calls")
    # Nothing is emitted while the call is being assembled (content is null in these deltas).
    for chunk in chunks[:-2]:
        assert translator.feed(chunk, T) == []
    emitted = translator.feed(chunks[-2], T)
    assert emitted == [
        {
            "model": "tiny",
            "created_at": T,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": WEATHER_ID, "function": {"index": 0, "name": "get_weather", "arguments": WEATHER_ARGS}}
                ],
            },
            "done": False,
        }
    ]
    assert translator.feed(chunks[-1], T) == []
    final = translator.final(T, TIMING)
    assert len(final) == 1
    assert final[0]["done"] is True
    assert final[0]["done_reason"] == "stop"  # Ollama never says tool_calls
    assert final[0]["eval_count"] == 52
    assert "tool_calls" not in final[0]["message"]


def test_stream_translator_tool_call_arguments_are_an_object():
    calls = all_tool_calls(run(weather_stream()))
    assert isinstance(calls[0]["function"]["arguments"], dict)


def test_stream_translator_tool_call_finishing_with_stop_is_still_emitted():
    # Named tool choice (and some parsers) end with finish_reason "stop".
    out = run(weather_stream("stop"))
    calls = all_tool_calls(out)
    assert calls == [{"id": WEATHER_ID, "function": {"index": 0, "name": "get_weather", "arguments": WEATHER_ARGS}}]
    assert out[-1]["done_reason"] == "stop"


def test_stream_translator_tool_calls_arrive_in_a_not_done_chunk():
    # LangChain's ChatOllama streams even for .invoke(): calls must arrive whole inside a chunk.
    out = run(weather_stream())
    with_calls = [c for c in out if c["message"].get("tool_calls")]
    assert len(with_calls) == 1
    assert out.index(with_calls[0]) < len(out) - 1


def test_stream_translator_two_parallel_tool_calls_interleaved_by_index():
    chunks = [
        role_chunk(),
        tool_start(0, "chatcmpl-tool-aaaa", "get_weather"),
        tool_args(0, '{"city": '),
        tool_start(1, "chatcmpl-tool-bbbb", "get_time"),
        tool_args(1, '{"tz": "UT'),
        tool_args(0, '"Paris"}'),
        tool_args(1, 'C"}'),
        delta_chunk({}, "tool_calls", stop_reason=0),
        usage_chunk(30, 20),
    ]
    calls = all_tool_calls(run(chunks))
    assert calls == [
        {"id": "chatcmpl-tool-aaaa", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "chatcmpl-tool-bbbb", "function": {"index": 1, "name": "get_time", "arguments": {"tz": "UTC"}}},
    ]


def test_stream_translator_tool_call_with_last_fragment_on_finish_chunk():
    chunks = [role_chunk(), tool_start(0, "id0", "f"), tool_args(0, '{"a": ')]
    last = tool_args(0, "1}")
    last["choices"][0]["finish_reason"] = "tool_calls"
    calls = all_tool_calls(run([*chunks, last]))
    assert calls[0]["function"]["arguments"] == {"a": 1}


def test_stream_translator_whole_tool_call_in_one_delta():
    # Some tool parsers send id, name and complete arguments in a single delta.
    whole = delta_chunk(
        {
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "index": 0, "function": {"name": "f", "arguments": '{"a": 1}'}}
            ],
        }
    )
    calls = all_tool_calls(run([role_chunk(), whole, delta_chunk({}, "tool_calls", 0)]))
    assert calls == [{"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]


def test_stream_translator_tool_call_deltas_with_explicit_nulls():
    # Later deltas may spell absent fields as null instead of leaving them out.
    later = delta_chunk(
        {
            "content": None,
            "tool_calls": [{"id": None, "type": None, "index": 0, "function": {"name": None, "arguments": '{"a": 2}'}}],
        }
    )
    calls = all_tool_calls(run([role_chunk(), tool_start(0, "call_9", "f"), later, delta_chunk({}, "tool_calls", 0)]))
    assert calls == [{"id": "call_9", "function": {"index": 0, "name": "f", "arguments": {"a": 2}}}]


def test_stream_translator_tool_call_without_arguments_is_empty_object():
    calls = all_tool_calls(run([role_chunk(), tool_start(0, "id0", "now"), delta_chunk({}, "tool_calls", 0)]))
    assert calls[0]["function"] == {"index": 0, "name": "now", "arguments": {}}


def test_stream_translator_tool_call_cut_off_at_length_ends_as_text_with_done_reason_length():
    chunks = [role_chunk(), tool_start(0, WEATHER_ID, "get_weather"), tool_args(0, '{"city": "Par')]
    cut = tool_args(0, "is")
    cut["choices"][0]["finish_reason"] = "length"
    out = run([*chunks, cut, usage_chunk(10, 300)])
    assert all_tool_calls(out) == []
    assert contents(out) == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris'
    assert out[-1]["done_reason"] == "length"
    assert out[-1]["eval_count"] == 300


def test_stream_translator_complete_calls_before_a_cut_off_one_are_still_calls():
    cut = tool_args(1, '{"tz": "U')
    cut["choices"][0]["finish_reason"] = "length"
    chunks = [role_chunk(), tool_start(0, "a", "f"), tool_args(0, '{"x": 1}'), tool_start(1, "b", "g"), cut]
    out = run(chunks)
    assert all_tool_calls(out) == [{"id": "a", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}]
    assert contents(out).endswith('"arguments": {"tz": "U')
    assert out[-1]["done_reason"] == "length"


def test_stream_translator_each_tool_call_in_a_line_of_its_own():
    # Ollama's parsers emit each call in the line where it completes; Haystack's OllamaChatGenerator
    # numbers calls by line, so two calls in one line would become one.
    chunks = [
        role_chunk(),
        tool_start(0, "a", "f"),
        tool_args(0, '{"x": 1}'),
        tool_start(1, "b", "g"),
        tool_args(1, '{"y": 2}'),
        delta_chunk({}, "tool_calls", stop_reason=0),
    ]
    lines = [c for c in run(chunks) if c["message"].get("tool_calls")]
    assert [len(c["message"]["tool_calls"]) for c in lines] == [1, 1]
    assert [c["message"]["tool_calls"][0]["function"]["index"] for c in lines] == [0, 1]


def test_stream_translator_invalid_tool_arguments_with_normal_finish_become_text():
    chunks = [
        role_chunk(),
        tool_start(0, WEATHER_ID, "get_weather"),
        tool_args(0, '{"city": }nceunc'),
        delta_chunk({}, "tool_calls", stop_reason=0),
    ]
    out = run(chunks)
    assert all_tool_calls(out) == []
    text = contents(out)
    assert "}nceunc" in text
    assert "get_weather" in text
    assert out[-1]["done"] is True


def test_stream_translator_tool_calls_never_finished_are_flushed_by_final():
    chunks = [role_chunk(), tool_start(0, "id0", "f"), tool_args(0, '{"a": 1}')]
    out = run(chunks)
    assert all_tool_calls(out) == [{"id": "id0", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]
    assert out[-1]["done"] is True
    assert list(out[-1]) == CHAT_FINAL_KEYS


def test_stream_translator_tool_calls_for_generate_target_are_top_level():
    out = run(weather_stream("tool_calls"), target="generate")
    with_calls = [c for c in out if c.get("tool_calls")]
    assert with_calls[0]["tool_calls"][0]["function"]["arguments"] == WEATHER_ARGS


# --- StreamTranslator: errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            {
                "error": {
                    "message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                    "type": "InternalServerError",
                    "param": None,
                    "code": 500,
                }
            },
            "EngineCore encountered an issue",
        ),
        (
            {"error": {"object": "error", "message": "boom", "type": "BadRequestError", "param": None, "code": 400}},
            "boom",
        ),
        ({"error": "Unauthorized"}, "Unauthorized"),
    ],
)
def test_stream_translator_error_event_inside_stream_raises(event, message):
    translator = StreamTranslator("tiny", "chat")
    translator.feed(role_chunk(), T)
    translator.feed(content_chunk("Th"), T)
    with pytest.raises(UpstreamStreamError) as info:
        translator.feed(event, T)
    assert message in str(info.value)


# --- StreamTranslator: logprobs -------------------------------------------------------------------

CHAT_LOGPROBS = {
    "content": [
        {
            "token": "Th",
            "logprob": -6.21,
            "bytes": [84, 104],
            "top_logprobs": [
                {"token": "Th", "logprob": -6.21, "bytes": [84, 104]},
                {"token": "x", "logprob": -6.3, "bytes": [120]},
            ],
        }
    ]
}
OLLAMA_LOGPROBS = [
    {
        "token": "Th",
        "logprob": -6.21,
        "bytes": [84, 104],
        "top_logprobs": [
            {"token": "Th", "logprob": -6.21, "bytes": [84, 104]},
            {"token": "x", "logprob": -6.3, "bytes": [120]},
        ],
    }
]


def test_stream_translator_logprobs_when_asked():
    chunk = delta_chunk({"content": "Th"}, logprobs=CHAT_LOGPROBS)
    out = run([role_chunk(), chunk], logprobs=True)
    assert out[0]["logprobs"] == OLLAMA_LOGPROBS
    assert list(out[0]) == ["model", "created_at", "message", "done", "logprobs"]


def test_stream_translator_no_logprobs_unless_asked():
    chunk = delta_chunk({"content": "Th"}, logprobs=CHAT_LOGPROBS)
    assert "logprobs" not in run([role_chunk(), chunk])[0]


def test_chat_logprobs_to_ollama_converts_vllm_shape():
    assert chat_logprobs_to_ollama(CHAT_LOGPROBS) == OLLAMA_LOGPROBS
    assert chat_logprobs_to_ollama(None) == []


def test_completion_logprobs_to_ollama_converts_vllm_shape():
    lp = {
        "text_offset": [0, 2],
        "token_logprobs": [-6.2, -5.9],
        "tokens": ["Th", "orld"],
        "top_logprobs": [{"Th": -6.2}, {"orld": -5.9}],
    }
    assert completion_logprobs_to_ollama(lp) == [
        {"token": "Th", "logprob": -6.2, "top_logprobs": [{"token": "Th", "logprob": -6.2}]},
        {"token": "orld", "logprob": -5.9, "top_logprobs": [{"token": "orld", "logprob": -5.9}]},
    ]
    assert completion_logprobs_to_ollama(None) == []


# --- final() statistics ---------------------------------------------------------------------------


def test_stream_translator_final_key_order_and_values():
    translator = StreamTranslator("tiny", "chat")
    translator.feed(usage_chunk(12, 3), T)
    (done,) = translator.final(T, Timing(start=1_000, upstream=3_000, first=10_000, end=50_000))
    assert list(done) == CHAT_FINAL_KEYS
    assert done["total_duration"] == 49_000
    assert done["load_duration"] == 2_000
    assert done["prompt_eval_count"] == 12
    assert done["prompt_eval_duration"] == 7_000
    assert done["eval_count"] == 3
    assert done["eval_duration"] == 40_000
    assert all(type(done[k]) is int for k in METRIC_KEYS)


def test_final_metrics_durations_add_up_to_total():
    m = final_metrics(
        Timing(start=0, upstream=100, first=1_100, end=21_100), {"prompt_tokens": 5, "completion_tokens": 8}
    )
    assert list(m) == METRIC_KEYS
    assert m["load_duration"] + m["prompt_eval_duration"] + m["eval_duration"] == m["total_duration"]


def test_final_metrics_unset_timing_is_zero_not_negative():
    m = final_metrics(Timing(start=5_000), None)
    assert m == dict.fromkeys(METRIC_KEYS, 0)


def test_final_metrics_counts_are_ints():
    m = final_metrics(TIMING, {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
    assert type(m["prompt_eval_count"]) is int
    assert type(m["eval_count"]) is int


def test_final_chunk_chat_and_generate_shapes():
    assert final_chunk("m", T, "chat", "stop") == {
        "model": "m",
        "created_at": T,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
    }
    assert final_chunk("m", T, "generate", "length") == {
        "model": "m",
        "created_at": T,
        "response": "",
        "done": True,
        "done_reason": "length",
    }


# --- load / unload --------------------------------------------------------------------------------


def test_load_response_chat_load_and_unload():
    load = load_response("llama3.2", T, "chat", unload=False)
    assert load == {
        "model": "llama3.2",
        "created_at": T,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "load",
    }
    assert list(load) == ["model", "created_at", "message", "done", "done_reason"]
    assert load_response("llama3.2", T, "chat", unload=True)["done_reason"] == "unload"


def test_load_response_generate_load_and_unload():
    load = load_response("llama3.2", T, "generate", unload=False)
    assert load == {"model": "llama3.2", "created_at": T, "response": "", "done": True, "done_reason": "load"}
    assert list(load) == ["model", "created_at", "response", "done", "done_reason"]
    assert load_response("llama3.2", T, "generate", unload=True)["done_reason"] == "unload"


# --- done_reason_for ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish_reason", "done_reason"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "stop"),
        (None, "stop"),
        ("abort", "stop"),
        ("content_filter", "stop"),
    ],
)
def test_done_reason_for_maps_to_stop_or_length(finish_reason, done_reason):
    # Ollama knows only stop/length here; "everything else -> stop" (llm/llama_server.go).
    assert done_reason_for(finish_reason) == done_reason


# --- whole_response: a non-streamed answer is the stream folded together ---------------------------


def fold(chunks: list[dict], target: str = "chat", logprobs: bool = False, timing: Timing = TIMING) -> dict:
    out = run(chunks, target, logprobs, timing)
    return whole_response(out[:-1], out[-1], target)


def test_whole_response_chat_real_vllm_stream():
    # The real SSE of shared/real-vllm-on-cpu.md §4 (max_tokens 3), folded.
    chunks = [
        role_chunk(),
        content_chunk("Th"),
        content_chunk("orld"),
        content_chunk(" tin", "length"),
        usage_chunk(12, 3),
    ]
    out = fold(chunks)
    assert out["model"] == "tiny:latest"  # the request's model string, verbatim
    assert out["created_at"] == T
    assert out["message"] == {"role": "assistant", "content": "Thorld tin"}
    assert out["done"] is True
    assert out["done_reason"] == "length"
    assert out["prompt_eval_count"] == 12
    assert out["eval_count"] == 3
    assert list(out) == CHAT_FINAL_KEYS


def test_whole_response_has_every_duration_including_prompt_eval_duration():
    out = fold([role_chunk(), content_chunk("x"), delta_chunk({}, "stop", 0), usage_chunk(5, 1)])
    assert list(out)[-6:] == METRIC_KEYS
    assert all(type(out[k]) is int for k in METRIC_KEYS)
    assert out["prompt_eval_duration"] == TIMING.first - TIMING.upstream
    assert out["eval_duration"] == TIMING.end - TIMING.first


def test_whole_response_chat_tool_calls_indexed_in_one_message():
    chunks = [
        role_chunk(),
        tool_start(0, "a", "f"),
        tool_args(0, "{}"),
        tool_start(1, "b", "g"),
        tool_args(1, '{"x": [1, 2]}'),
        delta_chunk({}, "tool_calls", stop_reason=0),
        usage_chunk(10, 5),
    ]
    out = fold(chunks)
    assert out["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "a", "function": {"index": 0, "name": "f", "arguments": {}}},
            {"id": "b", "function": {"index": 1, "name": "g", "arguments": {"x": [1, 2]}}},
        ],
    }
    assert out["done_reason"] == "stop"


def test_whole_response_tool_call_cut_off_by_the_token_limit_is_length_with_what_was_generated():
    # Ollama answers a generation cut off inside a tool call with done_reason "length" and the text
    # generated so far; never an error, and the same streamed or not.
    cut = tool_args(0, '{"city": "Par')
    cut["choices"][0]["finish_reason"] = "length"
    out = fold([role_chunk(), tool_start(0, "a", "get_weather"), cut, usage_chunk(10, 300)])
    assert out["done_reason"] == "length"
    assert "tool_calls" not in out["message"]
    assert out["message"]["content"] == '<tool_call>{"name": "get_weather", "arguments": {"city": "Par'


def test_whole_response_invalid_tool_arguments_normal_finish_become_text():
    chunks = [role_chunk(), tool_start(0, "a", "f"), tool_args(0, "[[null]"), delta_chunk({}, "tool_calls", 0)]
    out = fold(chunks)
    assert "tool_calls" not in out["message"]
    assert "[[null]" in out["message"]["content"]
    assert out["done_reason"] == "stop"


def test_whole_response_raw_tool_call_text_from_failed_parser_stays_content():
    # vLLM's hermes parser leaves unparsable calls as raw text.
    raw = '<tool_call>{"name": "f", "arguments": {bad}</tool_call>'
    out = fold([role_chunk(), content_chunk(raw), delta_chunk({}, "tool_calls", 0)])
    assert out["message"] == {"role": "assistant", "content": raw}


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_whole_response_reasoning_becomes_thinking(field):
    out = fold(
        [role_chunk(), delta_chunk({field: "Let me "}), delta_chunk({field: "think."}), content_chunk("42", "stop")]
    )
    assert out["message"] == {"role": "assistant", "content": "42", "thinking": "Let me think."}


def test_whole_response_for_generate_target():
    out = fold([role_chunk(), delta_chunk({"reasoning": "hmm"}), content_chunk("42", "stop")], target="generate")
    assert list(out)[:6] == ["model", "created_at", "response", "thinking", "done", "done_reason"]
    assert out["response"] == "42"
    assert out["thinking"] == "hmm"
    assert "message" not in out


def test_whole_response_text_completion():
    out = fold([text_chunk(" upon"), text_chunk(" a time", "length"), usage_chunk(2, 3)], target="generate")
    assert list(out) == GENERATE_FINAL_KEYS
    assert out["response"] == " upon a time"
    assert out["done_reason"] == "length"
    assert out["eval_count"] == 3


def test_whole_response_empty_answer_has_empty_content():
    out = fold([role_chunk(), delta_chunk({}, "stop", 0)])
    assert out["message"] == {"role": "assistant", "content": ""}
    assert type(out["eval_count"]) is int
    assert type(out["prompt_eval_count"]) is int


def test_whole_response_chat_logprobs_accumulate_and_precede_metrics():
    # ChatResponse key order (ollama-api.md §1.7): ..., done, done_reason, _debug_info, logprobs,
    # total_duration, load_duration, ... (the metrics come after logprobs in chat).
    chunks = [role_chunk(), delta_chunk({"content": "Th"}, logprobs=CHAT_LOGPROBS)]
    chunks += [delta_chunk({"content": "Th"}, "length", logprobs=CHAT_LOGPROBS)]
    out = fold(chunks, logprobs=True)
    assert out["logprobs"] == OLLAMA_LOGPROBS * 2
    assert list(out) == ["model", "created_at", "message", "done", "done_reason", "logprobs", *METRIC_KEYS]


def test_whole_response_generate_logprobs_come_last():
    # GenerateResponse key order (§1.6): ..., eval_duration, tool_calls, _debug_info, logprobs.
    chunk = text_chunk("Th", "length")
    chunk["choices"][0]["logprobs"] = {"tokens": ["Th"], "token_logprobs": [-1.0], "top_logprobs": None}
    out = fold([chunk, usage_chunk(1, 1)], target="generate", logprobs=True)
    assert list(out) == [*GENERATE_FINAL_KEYS, "logprobs"]
    assert out["logprobs"] == [{"token": "Th", "logprob": -1.0}]


# --- rfc3339_utc ----------------------------------------------------------------------------------

RFC3339_NANO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z")


def test_rfc3339_utc_trims_trailing_zeros():
    # Go's RFC3339Nano: "2025-07-07T20:22:19.19314Z".
    assert rfc3339_utc(1_751_919_739_193_140_000) == "2025-07-07T20:22:19.19314Z"


def test_rfc3339_utc_no_fraction_when_zero():
    assert rfc3339_utc(1_751_919_739_000_000_000) == "2025-07-07T20:22:19Z"
    assert rfc3339_utc(0) == "1970-01-01T00:00:00Z"


def test_rfc3339_utc_nanosecond_precision():
    assert rfc3339_utc(1_751_919_739_000_000_001) == "2025-07-07T20:22:19.000000001Z"
    assert rfc3339_utc(1_751_919_739_100_000_000) == "2025-07-07T20:22:19.1Z"


def test_rfc3339_utc_same_second_different_fractions_and_next_second():
    base = 1_751_919_739_000_000_000
    assert rfc3339_utc(base + 5) == "2025-07-07T20:22:19.000000005Z"
    assert rfc3339_utc(base + 500_000_000) == "2025-07-07T20:22:19.5Z"
    assert rfc3339_utc(base + 1_250_000_000) == "2025-07-07T20:22:20.25Z"
    assert rfc3339_utc(base - 1) == "2025-07-07T20:22:18.999999999Z"


def test_rfc3339_utc_now_is_utc_rfc3339nano():
    assert RFC3339_NANO_UTC.fullmatch(rfc3339_utc())


# --- error_message_of -----------------------------------------------------------------------------


MULTILINE_400 = (
    "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', "
    "'input': '<dict of 1 items>'}"
)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # current vLLM shape
        (
            {
                "error": {
                    "message": "The model `gpt-4` does not exist. Valid aliases: tiny.",
                    "type": "NotFoundError",
                    "param": "model",
                    "code": 404,
                }
            },
            "The model `gpt-4` does not exist. Valid aliases: tiny.",
        ),
        # older vLLM shape
        (
            {
                "object": "error",
                "message": "max_tokens must be at least 1, got 0.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            "max_tokens must be at least 1, got 0.",
        ),
        # --api-key failure
        ({"error": "Unauthorized"}, "Unauthorized"),
        # FastAPI
        ({"detail": "Not Found"}, "Not Found"),
        ({"detail": "Method Not Allowed"}, "Method Not Allowed"),
        # "Bad Request" with a space and a multi-line message: passed through verbatim
        (
            {
                "error": {
                    "message": MULTILINE_400,
                    "type": "Bad Request",
                    "param": "body.messages",
                    "code": 400,
                }
            },
            MULTILINE_400,
        ),
        ("Internal Server Error", "Internal Server Error"),
    ],
)
def test_error_message_of_vllm_error_shapes(payload, message):
    assert error_message_of(payload) == message


def test_error_message_of_fastapi_validation_detail_list_mentions_the_problem():
    payload = {"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": {}}]}
    result = error_message_of(payload)
    assert isinstance(result, str)
    assert "Field required" in result


@pytest.mark.parametrize("payload", [None, {}, "", {"error": None}, {"error": {}}, [], 42])
def test_error_message_of_unknown_shape_is_a_non_empty_string(payload):
    result = error_message_of(payload)
    assert isinstance(result, str)
    assert result


@pytest.mark.parametrize("bad", ["12", 1.5, -3, None, [1], True])
def test_final_metrics_usage_of_another_shape_counts_as_unknown(bad):
    # A hostile or broken upstream's usage must not turn into an exception of the gateway's own.
    metrics = final_metrics(TIMING, {"prompt_tokens": bad, "completion_tokens": bad})
    assert metrics["prompt_eval_count"] == 0 and metrics["eval_count"] == 0
