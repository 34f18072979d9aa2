"""adapter.translate.options: Ollama `options` -> vLLM sampling parameters.

Reference: shared/ollama-api.md §1.11 (the options table, removed-but-still-sent keys, type errors)
and shared/vllm-openai.md §4 (vLLM rejects max_tokens < 1 and repetition_penalty <= 0).
"""

from __future__ import annotations

import math

import pytest

from adapter.errors import BadRequest
from adapter.translate.options import ollama_options_to_sampling

# --- the mapping rows of the table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "param", "expected"),
    [
        ("num_predict", 128, "max_tokens", 128),
        ("temperature", 0.2, "temperature", 0.2),
        ("top_p", 0.9, "top_p", 0.9),
        ("top_k", 40, "top_k", 40),
        ("min_p", 0.05, "min_p", 0.05),
        ("seed", 42, "seed", 42),
        ("seed", 0, "seed", 0),
        ("stop", ["<|eot_id|>", "\n\n"], "stop", ["<|eot_id|>", "\n\n"]),
        ("repeat_penalty", 1.1, "repetition_penalty", 1.1),
        ("presence_penalty", 0.5, "presence_penalty", 0.5),
        ("frequency_penalty", -0.5, "frequency_penalty", -0.5),
    ],
)
def test_ollama_options_to_sampling_maps_each_table_row(option, value, param, expected):
    assert ollama_options_to_sampling({option: value}) == {param: expected}


def test_ollama_options_to_sampling_full_client_options_object():
    # What ollama-python sends when a user fills in many fields at once.
    out = ollama_options_to_sampling(
        {
            "num_ctx": 8192,
            "num_predict": 64,
            "temperature": 0.7,
            "top_p": 0.95,
            "top_k": 20,
            "seed": 7,
            "stop": ["</s>"],
            "repeat_penalty": 1.05,
            "num_thread": 8,
            "mirostat": 0,
        }
    )
    assert out == {
        "max_tokens": 64,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 20,
        "seed": 7,
        "stop": ["</s>"],
        "repetition_penalty": 1.05,
    }


def test_ollama_options_to_sampling_none_and_empty_give_no_params():
    assert ollama_options_to_sampling(None) == {}
    assert ollama_options_to_sampling({}) == {}


def test_ollama_options_to_sampling_unknown_key_is_ignored():
    assert ollama_options_to_sampling({"not_an_option": 1, "temperature": 0.5}) == {"temperature": 0.5}


def test_ollama_options_to_sampling_null_value_is_ignored():
    # Ollama's Options.FromMap skips nil values.
    assert ollama_options_to_sampling({"temperature": None, "seed": None, "stop": None}) == {}


# --- num_predict ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, -2])
def test_ollama_options_to_sampling_num_predict_negative_is_dropped(value):
    # -1 = no limit, -2 = fill the context; vLLM answers 400 to max_tokens < 1.
    assert ollama_options_to_sampling({"num_predict": value}) == {}


def test_ollama_options_to_sampling_num_predict_zero_never_sends_max_tokens_below_one():
    out = ollama_options_to_sampling({"num_predict": 0})
    assert out.get("max_tokens", 1) >= 1


def test_ollama_options_to_sampling_num_predict_float_is_truncated_to_int():
    # "Floats given for int fields are truncated."
    out = ollama_options_to_sampling({"num_predict": 12.9})
    assert out == {"max_tokens": 12}
    assert type(out["max_tokens"]) is int


def test_ollama_options_to_sampling_num_predict_large_int64_is_passed_on():
    # Within int64: vLLM itself reports max_tokens > max_model_len with its own message.
    assert ollama_options_to_sampling({"num_predict": 2**40}) == {"max_tokens": 2**40}


# --- seed -----------------------------------------------------------------------------------------


def test_ollama_options_to_sampling_seed_minus_one_is_dropped():
    # -1 means "random" in Ollama.
    assert ollama_options_to_sampling({"seed": -1}) == {}


def test_ollama_options_to_sampling_seed_float_is_truncated():
    out = ollama_options_to_sampling({"seed": 3.0})
    assert out == {"seed": 3}
    assert type(out["seed"]) is int


# --- stop -----------------------------------------------------------------------------------------


def test_ollama_options_to_sampling_stop_string_becomes_list():
    assert ollama_options_to_sampling({"stop": "\n"}) == {"stop": ["\n"]}


def test_ollama_options_to_sampling_stop_empty_list_is_dropped():
    assert ollama_options_to_sampling({"stop": []}) == {}


@pytest.mark.parametrize("value", [5, ["ok", 1], {"a": "b"}, True])
def test_ollama_options_to_sampling_stop_wrong_type_is_bad_request_naming_stop(value):
    with pytest.raises(BadRequest) as info:
        ollama_options_to_sampling({"stop": value})
    assert info.value.status == 400
    assert "stop" in info.value.message


# --- repeat_penalty / top_k -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, -1.0])
def test_ollama_options_to_sampling_repeat_penalty_not_positive_is_dropped(value):
    # vLLM requires repetition_penalty > 0 (0 is a 400); Ollama's 0 means "off".
    out = ollama_options_to_sampling({"repeat_penalty": value})
    assert "repetition_penalty" not in out
    assert "repeat_penalty" not in out


def test_ollama_options_to_sampling_repeat_penalty_int_becomes_float():
    out = ollama_options_to_sampling({"repeat_penalty": 1})
    assert out == {"repetition_penalty": 1.0}
    assert type(out["repetition_penalty"]) is float


def test_ollama_options_to_sampling_top_k_zero_disables_top_k():
    # Ollama's 0 disables top-k; vLLM's portable spelling of "all tokens" is -1 (or leaving it out).
    out = ollama_options_to_sampling({"top_k": 0})
    assert out.get("top_k", -1) == -1


def test_ollama_options_to_sampling_top_k_float_is_truncated_to_int():
    out = ollama_options_to_sampling({"top_k": 40.0})
    assert out == {"top_k": 40}
    assert type(out["top_k"]) is int


def test_ollama_options_to_sampling_temperature_int_becomes_float():
    out = ollama_options_to_sampling({"temperature": 1})
    assert out == {"temperature": 1.0}
    assert type(out["temperature"]) is float


def test_ollama_options_to_sampling_temperature_zero_is_kept():
    # 0 is greedy decoding, a real value, not "unset".
    assert ollama_options_to_sampling({"temperature": 0}) == {"temperature": 0.0}


# --- ignored engine options -----------------------------------------------------------------------

# The engine/load-time rows of the table plus the keys removed from Ollama's server in 2025 that
# ollama-python and ollama-js still send: accepted, never forwarded to vLLM.
IGNORED = {
    "num_ctx": 8192,
    "num_keep": 4,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "num_batch": 512,
    "num_gpu": -1,
    "main_gpu": 0,
    "use_mmap": True,
    "num_thread": 8,
    "draft_num_predict": 4,
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
    "penalize_newline": True,
    "tfs_z": 1.0,
    "numa": False,
    "low_vram": False,
    "f16_kv": True,
    "logits_all": False,
    "vocab_only": False,
    "use_mlock": False,
    "embedding_only": False,
}


@pytest.mark.parametrize(("option", "value"), sorted(IGNORED.items()))
def test_ollama_options_to_sampling_engine_option_is_accepted_and_not_forwarded(option, value):
    assert ollama_options_to_sampling({option: value}) == {}


def test_ollama_options_to_sampling_all_ignored_options_together():
    assert ollama_options_to_sampling(dict(IGNORED)) == {}


def test_ollama_options_to_sampling_num_ctx_never_reaches_vllm():
    out = ollama_options_to_sampling({"num_ctx": 8192, "temperature": 0.1})
    assert out == {"temperature": 0.1}


# --- wrong types -> 400 naming the option ---------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("temperature", "hot"),
        ("temperature", [0.5]),
        ("top_p", {"v": 1}),
        ("top_k", "40"),
        ("num_predict", "128"),
        ("num_predict", True),  # Go's encoding/json never takes a bool for a number
        ("seed", False),
        ("min_p", "0.1"),
        ("repeat_penalty", "1.1"),
        ("num_ctx", "8192"),
        ("use_mmap", "yes"),
        ("use_mmap", 1),
    ],
)
def test_ollama_options_to_sampling_wrong_type_is_bad_request_naming_option(option, value):
    with pytest.raises(BadRequest) as info:
        ollama_options_to_sampling({option: value})
    assert info.value.status == 400
    assert option in info.value.message


@pytest.mark.parametrize("options", ["temperature=1", [1, 2]])
def test_ollama_options_to_sampling_options_not_an_object_is_bad_request(options):
    with pytest.raises(BadRequest):
        ollama_options_to_sampling(options)


# --- huge ints, NaN, infinity ---------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [("num_predict", 2**70), ("seed", 2**64), ("top_k", -(2**80))])
def test_ollama_options_to_sampling_int_beyond_int64_is_bad_request(option, value):
    with pytest.raises(BadRequest) as info:
        ollama_options_to_sampling({option: value})
    assert option in info.value.message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("option", ["temperature", "top_p", "num_predict", "seed"])
def test_ollama_options_to_sampling_non_finite_number_is_bad_request(option, value):
    with pytest.raises(BadRequest) as info:
        ollama_options_to_sampling({option: value})
    assert option in info.value.message


def test_ollama_options_to_sampling_does_not_mutate_input():
    options = {"stop": "x", "num_predict": -1, "top_k": 0}
    snapshot = {"stop": "x", "num_predict": -1, "top_k": 0}
    ollama_options_to_sampling(options)
    assert options == snapshot
