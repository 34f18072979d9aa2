"""adapter.translate.models: /api/tags, /api/show, /api/ps shapes for vLLM-served models.

References: shared/ollama-api.md §1.3-1.5 (key orders, digest without `sha256:`, model_info always
present, `<arch>.context_length`), §3.1 (ollama-python requires model_info), shared/vllm-openai.md §2-3
(Copilot reads general.architecture, <arch>.context_length, general.basename and capabilities).
"""

from __future__ import annotations

import re

import pytest

from adapter.translate.models import (
    ListedName,
    default_capabilities,
    digest_of,
    estimated_size,
    family_of,
    model_details,
    openai_models_listing,
    parameter_size_of,
    parameters_text,
    ps_entry,
    ps_listing,
    quantization_of,
    show_response,
    tag_name,
    tags_entry,
    tags_listing,
)

MODIFIED = "2026-11-23T17:18:12.639712648+01:00"
DETAILS_KEYS = ["parent_model", "format", "family", "families", "parameter_size", "quantization_level"]


# --- guesses from the model id --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "family", "parameter_size"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "llama", "8B"),
        ("smollm2:135m", "llama", ""),
        ("meta-llama/Llama-3.2-1B-Instruct", "llama", "1B"),
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", "qwen2", "7B"),
        ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "qwen2", "1.5B"),
        ("Qwen/Qwen3-0.6B", "qwen3", "0.6B"),
        ("google/gemma-3-27b-it", "gemma3", "27B"),
        ("google/gemma-2-9b-it", "gemma2", "9B"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", None, "135M"),
    ],
)
def test_family_of_and_parameter_size_of_common_ids(model_id, family, parameter_size):
    if family is not None:
        assert family_of(model_id) == family
    assert parameter_size_of(model_id) == parameter_size


def test_family_of_mixtral_is_llama_like_ollama():
    assert family_of("mistralai/Mixtral-8x7B-Instruct-v0.1") == "llama"


def test_parameter_size_of_mixtral_names_the_experts():
    size = parameter_size_of("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert size.upper().endswith("B")
    assert "0.1" not in size  # the version suffix is not a size


def test_parameter_size_of_ignores_version_numbers():
    assert parameter_size_of("meta-llama/Llama-3.1-8B-Instruct") == "8B"
    assert parameter_size_of("mistralai/Mistral-7B-Instruct-v0.3") == "7B"


def test_family_of_and_parameter_size_of_tiny():
    family = family_of("tiny")
    assert re.fullmatch(r"[a-z0-9]+", family)
    assert parameter_size_of("tiny") == ""


def test_family_of_unknown_is_a_gguf_like_key():
    assert re.fullmatch(r"[a-z0-9]+", family_of("acme/My-Model_v2"))


@pytest.mark.parametrize(
    ("model_id", "level"),
    [
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", "AWQ"),
        ("TheBloke/Llama-2-7B-GPTQ", "GPTQ"),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "FP8"),
        ("RedHatAI/Qwen2.5-7B-Instruct-quantized.w4a16", "INT4"),
        ("RedHatAI/Llama-3.1-8B-Instruct-quantized.w8a8", "INT8"),
    ],
)
def test_quantization_of_known_levels(model_id, level):
    assert quantization_of(model_id)[0] == level


def test_quantization_of_unquantized_is_a_string():
    level, width = quantization_of("meta-llama/Llama-3.1-8B-Instruct")
    assert isinstance(level, str)
    assert level
    assert width == 2.0


def test_estimated_size_is_int_and_scales_with_quantization():
    full = estimated_size("Qwen/Qwen2.5-7B-Instruct")
    awq = estimated_size("Qwen/Qwen2.5-7B-Instruct-AWQ")
    assert type(full) is int
    assert full == 14_000_000_000
    assert awq < full
    assert estimated_size("tiny") == 0


# --- tag_name / digest ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("tiny", "tiny:latest"),
        ("llama3.2:1b", "llama3.2:1b"),
        ("tiny:latest", "tiny:latest"),
        ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct:latest"),
        ("registry.local:5000/ns/model", "registry.local:5000/ns/model:latest"),
    ],
)
def test_tag_name_adds_latest_when_no_tag(name, listed):
    assert tag_name(name) == listed


def test_digest_of_is_64_hex_without_prefix_and_stable():
    digest = digest_of("vllm", "tiny")
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == digest_of("vllm", "tiny")
    assert digest != digest_of("vllm", "tiny2")


# --- details / tags / ps --------------------------------------------------------------------------


def test_model_details_shape():
    details = model_details("Qwen/Qwen2.5-7B-Instruct-AWQ")
    assert list(details) == DETAILS_KEYS
    assert details == {
        "parent_model": "",
        "format": "safetensors",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": "7B",
        "quantization_level": "AWQ",
    }


def test_model_details_family_override():
    details = model_details("org/odd-name", family="llama")
    assert details["family"] == "llama"
    assert details["families"] == ["llama"]


def listed(name: str, upstream_id: str, context_length: int | None = 2048, caps=("completion", "tools")) -> ListedName:
    return ListedName(name.lower().removesuffix(":latest"), name, upstream_id, None, context_length, caps)


def test_model_details_context_length_goes_last_when_known():
    # ModelDetails (api/types.go, Ollama 0.30): ..., quantization_level, context_length, embedding_length.
    details = model_details("tiny", context_length=2048)
    assert list(details) == [*DETAILS_KEYS, "context_length"]
    assert details["context_length"] == 2048


def test_tags_entry_shape_and_key_order():
    entry = tags_entry(listed("tiny", "tiny"), MODIFIED)
    # ListModelResponse (Ollama 0.30): name, model, modified_at, size, digest, details, capabilities.
    assert list(entry) == ["name", "model", "modified_at", "size", "digest", "details", "capabilities"]
    assert entry["name"] == entry["model"] == "tiny:latest"
    assert entry["modified_at"] == MODIFIED
    assert type(entry["size"]) is int
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert list(entry["details"]) == [*DETAILS_KEYS, "context_length"]
    assert entry["details"]["context_length"] == 2048
    assert entry["capabilities"] == ["completion", "tools"]


def test_tags_entry_unknown_context_length_is_left_out_of_details():
    assert list(tags_entry(listed("tiny", "tiny", None), MODIFIED)["details"]) == DETAILS_KEYS


def test_tags_entry_alias_describes_the_upstream_model():
    entry = tags_entry(listed("llama3.1:8b", "meta-llama/Llama-3.1-8B-Instruct"), MODIFIED)
    assert entry["name"] == "llama3.1:8b"
    assert entry["details"]["family"] == "llama"
    assert entry["details"]["parameter_size"] == "8B"
    assert entry["digest"] == digest_of("vllm", "meta-llama/Llama-3.1-8B-Instruct")


def test_ps_entry_shape_and_key_order():
    entry = ps_entry(listed("tiny", "tiny"), "2318-11-23T17:18:12+01:00")
    assert list(entry) == ["name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"]
    assert entry["name"] == "tiny:latest"
    assert entry["context_length"] == 2048
    assert entry["details"]["parent_model"] == ""
    # As in Ollama's PsHandler: the loaded context length is top-level, not in details.
    assert list(entry["details"]) == DETAILS_KEYS
    assert type(entry["size_vram"]) is int


def test_ps_entry_unknown_context_length_is_int_zero():
    assert ps_entry(listed("tiny", "tiny", None), MODIFIED)["context_length"] == 0


# --- one list across backends ---------------------------------------------------------------------

VISION_MODELS = [
    {"name": "llava:7b", "model": "llava:7b", "modified_at": MODIFIED, "size": 1, "digest": "d" * 64, "details": {}},
    {"name": "tiny:latest", "model": "tiny:latest", "modified_at": MODIFIED, "size": 1, "digest": "e" * 64},
]


def test_tags_listing_vllm_names_first_and_own_their_name():
    names = [listed("tiny", "tiny")]
    models = tags_listing(names, {"tiny": MODIFIED}, VISION_MODELS, [], discover=True)
    assert [m["name"] for m in models] == ["tiny:latest", "llava:7b"]
    assert models[0]["digest"] == digest_of("vllm", "tiny")  # vLLM's, not Ollama Vision's


def test_tags_listing_catalog_ollama_entries_listed_under_their_names_only_when_pulled():
    entries = [(("vision", "see"), "llava:7b"), (("absent",), "bakllava:7b")]
    models = tags_listing([], {}, VISION_MODELS, entries, discover=False)
    assert [m["name"] for m in models] == ["vision:latest", "see:latest"]
    assert models[0]["digest"] == "d" * 64


def test_ps_listing_merges_ollama_running_models_vllm_does_not_own():
    running = [{"name": "llava:7b", "model": "llava:7b"}, {"name": "tiny:latest", "model": "tiny:latest"}]
    models = ps_listing([listed("tiny", "tiny")], MODIFIED, running)
    assert [m["name"] for m in models] == ["tiny:latest", "llava:7b"]


def test_openai_models_listing_owned_by_says_the_backend():
    data = openai_models_listing([listed("tiny", "tiny")], {"tiny": 5}, VISION_MODELS, [], 9)
    assert data == [
        {"id": "tiny", "object": "model", "created": 5, "owned_by": "vllm"},
        {"id": "llava:7b", "object": "model", "created": 9, "owned_by": "library"},
    ]


# --- show -----------------------------------------------------------------------------------------

SHOW_ORDER = [
    "license",
    "modelfile",
    "parameters",
    "template",
    "system",
    "renderer",
    "parser",
    "details",
    "messages",
    "remote_model",
    "remote_host",
    "model_info",
    "projector_info",
    "tensors",
    "capabilities",
    "modified_at",
    "requires",
]


def test_show_response_model_info_architecture_and_both_context_length_keys():
    body = show_response(
        "meta-llama/Llama-3.1-8B-Instruct", MODIFIED, context_length=131072, capabilities=["completion", "tools"]
    )
    info = body["model_info"]
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 131072
    assert info["general.context_length"] == 131072
    # How Copilot reads it.
    assert info[f"{info['general.architecture']}.context_length"] == 131072
    assert info["general.basename"]


def test_show_response_tiny_model():
    body = show_response("tiny", MODIFIED, context_length=2048, capabilities=["completion"])
    arch = body["model_info"]["general.architecture"]
    assert body["model_info"][f"{arch}.context_length"] == 2048
    assert body["model_info"]["general.context_length"] == 2048
    assert arch == body["details"]["family"]


def test_show_response_key_order_follows_ollama():
    body = show_response("tiny", MODIFIED, context_length=2048, capabilities=["completion", "tools"])
    keys = list(body)
    assert keys == [k for k in SHOW_ORDER if k in keys]
    for required in ("details", "model_info", "modified_at", "capabilities"):
        assert required in body


def test_show_response_model_info_present_without_context_length():
    # ollama-python's ShowResponse requires model_info; several integrations crash on null.
    body = show_response("tiny", MODIFIED, context_length=None, capabilities=["completion"])
    assert isinstance(body["model_info"], dict)
    assert "general.architecture" in body["model_info"]
    assert "general.context_length" not in body["model_info"]


def test_show_response_capabilities_and_modified_at_passed_through():
    caps = ["completion", "tools", "thinking", "vision"]
    body = show_response("Qwen/Qwen3-8B", MODIFIED, context_length=4096, capabilities=caps)
    assert body["capabilities"] == caps
    assert body["modified_at"] == MODIFIED
    # details.context_length: Ollama 0.30's ModelDetails field, which clients read from /api/show.
    assert list(body["details"]) == [*DETAILS_KEYS, "context_length"]
    assert body["details"]["context_length"] == 4096


def test_show_response_parameters_num_ctx_line_like_ollama():
    # "%-30s %#v" lines; Continue parses num_ctx from here.
    body = show_response("tiny", MODIFIED, context_length=4096, capabilities=["completion"])
    assert "num_ctx                        4096" in body["parameters"].splitlines()
    assert re.search(r"^num_ctx\s+(\d+)$", body["parameters"], re.MULTILINE).group(1) == "4096"


def test_show_response_template_is_passed_through():
    body = show_response(
        "coder",
        MODIFIED,
        context_length=None,
        capabilities=["completion", "insert"],
        template="{{ .Prompt }}{{ .Suffix }}",
    )
    assert ".Suffix" in body["template"]  # Continue's FIM test


def test_parameters_text_stop_lines_are_go_quoted():
    text = parameters_text(2048, ["<|eot_id|>"])
    assert text.splitlines() == ["num_ctx                        2048", 'stop                           "<|eot_id|>"']


# --- capabilities ---------------------------------------------------------------------------------


def test_default_capabilities_chat_model_has_completion_and_tools():
    caps = default_capabilities("meta-llama/Llama-3.1-8B-Instruct")
    assert "completion" in caps
    assert "tools" in caps  # Copilot agent mode needs it
    assert "thinking" not in caps
    assert "embedding" not in caps


@pytest.mark.parametrize(
    "model_id", ["Qwen/Qwen3-8B", "Qwen/QwQ-32B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "openai/gpt-oss-20b"]
)
def test_default_capabilities_reasoning_models_have_thinking(model_id):
    assert "thinking" in default_capabilities(model_id)


def test_default_capabilities_are_known_ollama_values():
    known = {"completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio"}
    assert set(default_capabilities("Qwen/Qwen3-8B")) <= known


def test_parameters_text_stop_with_newline_and_quote_is_go_escaped():
    # Go's %#v quotes strings: a newline is written as \n, a quote as \" (one line per parameter).
    text = parameters_text(None, ["\n\n", 'say "hi"'])
    assert text.splitlines() == [
        'stop                           "\\n\\n"',
        'stop                           "say \\"hi\\""',
    ]
