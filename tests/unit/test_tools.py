"""adapter.translate.tools: vLLM tool-call fragments -> whole Ollama tool calls.

vLLM streams `{index, id?, type?, function: {name?, arguments?: "<fragment>"}}` deltas (the first
with id and name, no arguments); Ollama clients want `{"id"?, "function": {"index", "name",
"arguments": {object}}}` once per call (shared/ollama-api.md §1.7, §2.4; real-vllm-on-cpu.md §5).
"""

from __future__ import annotations

import pytest

from adapter.translate.tools import (
    ToolCallAccumulator,
    ToolCallError,
    ToolCallShapeError,
    openai_tool_call_to_ollama,
    parse_arguments,
)

# --- parse_arguments ------------------------------------------------------------------------------


def test_parse_arguments_json_object_string():
    assert parse_arguments('{"city": "Paris", "n": 2}') == {"city": "Paris", "n": 2}


def test_parse_arguments_keeps_key_order():
    assert list(parse_arguments('{"z": 1, "a": 2, "m": 3}')) == ["z", "a", "m"]


def test_parse_arguments_with_raw_whitespace_from_stream():
    # The streamed text is the raw generated text, whitespace included.
    assert parse_arguments('{"city":"}nceunc am5D",  \n"unit" :\n "celsius"}') == {
        "city": "}nceunc am5D",
        "unit": "celsius",
    }


def test_parse_arguments_object_is_returned_as_is():
    args = {"a": [1, 2]}
    assert parse_arguments(args) == args


@pytest.mark.parametrize("empty", [None, "", "   ", "\n"])
def test_parse_arguments_empty_is_empty_object(empty):
    assert parse_arguments(empty) == {}


@pytest.mark.parametrize("bad", ['{"a": ', "{bad}", '"902101086355"', "[[null]]", "42", "[1, 2]"])
def test_parse_arguments_not_a_json_object_raises(bad):
    # Without strict tools vLLM can produce "[[null]]" or a bare number: not Ollama arguments.
    with pytest.raises(ToolCallError):
        parse_arguments(bad)


def test_parse_arguments_big_integers_survive():
    # xgrammar integers are unbounded; Python keeps them, and so must we.
    assert parse_arguments('{"count": -602107028868279407455}') in (
        {"count": -602107028868279407455},
        {"count": -6.021070288682794e20},
    )


# --- openai_tool_call_to_ollama -------------------------------------------------------------------


def test_openai_tool_call_to_ollama_shape_and_key_order():
    call = {"id": "chatcmpl-tool-1", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}
    out = openai_tool_call_to_ollama(call, 0)
    assert out == {"id": "chatcmpl-tool-1", "function": {"index": 0, "name": "get_time", "arguments": {"tz": "UTC"}}}
    assert list(out) == ["id", "function"]
    assert list(out["function"]) == ["index", "name", "arguments"]
    assert "type" not in out


def test_openai_tool_call_to_ollama_without_id_omits_id():
    out = openai_tool_call_to_ollama({"function": {"name": "f", "arguments": "{}"}}, 2)
    assert out == {"function": {"index": 2, "name": "f", "arguments": {}}}


# --- ToolCallAccumulator --------------------------------------------------------------------------


def test_tool_call_accumulator_real_vllm_fragments():
    acc = ToolCallAccumulator()
    assert not acc
    acc.add(
        [{"id": "chatcmpl-tool-ad67bd1475b61394", "type": "function", "index": 0, "function": {"name": "get_weather"}}]
    )
    for fragment in ['{"', "c", 'ity":"}nceunc am5D",  \n"unit" :\n "celsius', '"}']:
        acc.add([{"index": 0, "function": {"arguments": fragment}}])
    assert acc
    calls, text = acc.flush()
    assert calls == [
        {
            "id": "chatcmpl-tool-ad67bd1475b61394",
            "function": {"index": 0, "name": "get_weather", "arguments": {"city": "}nceunc am5D", "unit": "celsius"}},
        }
    ]
    assert text == ""


def test_tool_call_accumulator_flush_clears_state():
    acc = ToolCallAccumulator()
    acc.add([{"index": 0, "id": "x", "function": {"name": "f", "arguments": "{}"}}])
    acc.flush()
    assert not acc
    assert acc.flush() == ([], "")


def test_tool_call_accumulator_interleaved_indexes():
    acc = ToolCallAccumulator()
    acc.add([{"index": 1, "id": "b", "function": {"name": "g"}}])
    acc.add([{"index": 0, "id": "a", "function": {"name": "f"}}])
    acc.add([{"index": 1, "function": {"arguments": '{"y":'}}, {"index": 0, "function": {"arguments": '{"x":'}}])
    acc.add([{"index": 0, "function": {"arguments": " 1}"}}])
    acc.add([{"index": 1, "function": {"arguments": " 2}"}}])
    calls, _ = acc.flush()
    assert calls == [
        {"id": "a", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}},
        {"id": "b", "function": {"index": 1, "name": "g", "arguments": {"y": 2}}},
    ]


def test_tool_call_accumulator_arguments_as_whole_object():
    acc = ToolCallAccumulator()
    acc.add([{"index": 0, "id": "a", "function": {"name": "f", "arguments": {"k": "v"}}}])
    calls, _ = acc.flush()
    assert calls[0]["function"]["arguments"] == {"k": "v"}


def test_tool_call_accumulator_delta_without_index_uses_position():
    acc = ToolCallAccumulator()
    acc.add(
        [
            {"id": "a", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "function": {"name": "g", "arguments": "{}"}},
        ]
    )
    calls, _ = acc.flush()
    assert [c["id"] for c in calls] == ["a", "b"]


def test_tool_call_accumulator_cut_off_call_is_the_text_generated_so_far():
    acc = ToolCallAccumulator()
    acc.add([{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"city": "Par'}}])
    assert acc.flush(cut_off=True) == ([], '<tool_call>{"name": "f", "arguments": {"city": "Par')


@pytest.mark.parametrize(
    "deltas",
    [
        "not a list",
        [5],
        [{"index": "0", "function": {"name": "f"}}],
        [{"index": 0, "function": "f"}],
        [{"index": 0, "function": {"name": "f", "arguments": 5}}],
    ],
)
def test_tool_call_accumulator_rejects_shapes_no_server_sends(deltas):
    # The upstream's fault, named as such (a 502 or a last error line), never the gateway's own 500.
    with pytest.raises(ToolCallShapeError):
        ToolCallAccumulator().add(deltas)


def test_tool_call_accumulator_truncated_but_complete_is_fine():
    acc = ToolCallAccumulator()
    acc.add([{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"city": "Paris"}'}}])
    calls, text = acc.flush(cut_off=True)
    assert calls[0]["function"]["arguments"] == {"city": "Paris"}
    assert text == ""


def test_tool_call_accumulator_invalid_with_normal_finish_becomes_text():
    acc = ToolCallAccumulator()
    acc.add([{"index": 0, "id": "a", "function": {"name": "get_weather", "arguments": "{oops"}}])
    acc.add([{"index": 1, "id": "b", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}])
    calls, text = acc.flush()
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    assert "get_weather" in text
    assert "{oops" in text
