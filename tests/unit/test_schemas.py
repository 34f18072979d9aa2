"""adapter.schemas: request validation at the edge and Ollama's keep_alive.

keep_alive (shared/ollama-api.md §0, api.Duration.UnmarshalJSON): a JSON number is seconds (float
ok); a string is a Go duration ("5m", "1h30m", "300ms"), parsed by time.ParseDuration, so a bare
"300" fails with `time: missing unit in duration "300"`; negative means keep forever; 0 unloads.
"""

from __future__ import annotations

import pytest

from adapter.errors import BadRequest
from adapter.schemas import ChatRequest, GenerateRequest, keep_alive_seconds, model_name, validate

# --- keep_alive_seconds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (0.0, 0.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("-0", 0.0),
        (300, 300.0),
        (1.5, 1.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("30s", 30.0),
        ("+5m", 300.0),
        (".5s", 0.5),
        ("1m30s500ms", 90.5),
    ],
)
def test_keep_alive_seconds_valid(value, seconds):
    assert keep_alive_seconds(value) == pytest.approx(seconds)


def test_keep_alive_seconds_none_is_none():
    assert keep_alive_seconds(None) is None


@pytest.mark.parametrize("value", [-1, -1.0, "-1m", "-5m", "-1h"])
def test_keep_alive_seconds_negative_means_forever(value):
    result = keep_alive_seconds(value)
    assert result is not None
    assert result < 0


def test_keep_alive_seconds_zero_is_unload():
    # An empty prompt with keep_alive 0 is Ollama's unload request (Home Assistant uses it).
    assert keep_alive_seconds(0) == 0
    assert keep_alive_seconds("0") == 0


@pytest.mark.parametrize("value", ["300", "-1", "1.5"])
def test_keep_alive_seconds_string_without_unit_is_missing_unit_error(value):
    # Go's time.ParseDuration: "-1" is a string without a unit too (only the number -1 is "forever").
    with pytest.raises(BadRequest) as info:
        keep_alive_seconds(value)
    assert info.value.status == 400
    assert info.value.message == f'time: missing unit in duration "{value}"'


@pytest.mark.parametrize("value", ["", "5 m", "five minutes", "5d", "m", "5m!", "1h30"])
def test_keep_alive_seconds_invalid_duration_is_bad_request(value):
    with pytest.raises(BadRequest) as info:
        keep_alive_seconds(value)
    assert "duration" in info.value.message


@pytest.mark.parametrize("value", [True, False])
def test_keep_alive_seconds_bool_is_bad_request(value):
    with pytest.raises(BadRequest):
        keep_alive_seconds(value)


# --- validate -------------------------------------------------------------------------------------


def test_validate_chat_request_typical_body_passes_unchanged():
    body = {
        "model": "llama3.2",
        "messages": [
            {"role": "user", "content": "Hi", "images": ["iVBORw0KGgo="]},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
            {"role": "tool", "content": "ok", "tool_name": "f"},
        ],
        "tools": [],
        "stream": False,
        "keep_alive": "5m",
        "options": {"num_ctx": 8192},
        "think": "high",
        "format": {"type": "object"},
        "unknown_field": {"kept": True},
    }
    assert validate(ChatRequest, body) is body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m", "stream": "true"}, "stream"),
        ({"model": "m", "messages": [{"content": "no role"}]}, "role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "content"),
        ({"model": "m", "options": "fast"}, "options"),
        ({"model": "m", "top_logprobs": 21}, "top_logprobs"),
        ({"model": "m", "keep_alive": [5]}, "keep_alive"),
    ],
)
def test_validate_chat_request_wrong_type_is_bad_request_naming_field(body, field):
    with pytest.raises(BadRequest) as info:
        validate(ChatRequest, body)
    assert field in info.value.message


def test_validate_generate_request_context_must_be_ints():
    with pytest.raises(BadRequest) as info:
        validate(GenerateRequest, {"model": "m", "prompt": "x", "context": ["a"]})
    assert "context" in info.value.message


# --- model_name -----------------------------------------------------------------------------------


def test_model_name_from_model_or_name():
    assert model_name({"model": "llama3.2"}) == "llama3.2"
    assert model_name({"name": "llama3.2:latest"}) == "llama3.2:latest"  # ollama-js and Continue send name


@pytest.mark.parametrize("body", [{}, {"model": ""}, {"model": "   "}, {"model": 5}])
def test_model_name_missing_is_model_is_required(body):
    with pytest.raises(BadRequest) as info:
        model_name(body)
    assert info.value.message == "model is required"
