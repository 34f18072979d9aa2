"""adapter.catalog: the optional YAML model catalog (ADAPTER_MODELS_FILE), validated at start.

A wrong entry must stop the gateway with a message naming the entry and the field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.catalog import FIM_TEMPLATES, Catalog, CatalogError, ModelEntry, load_catalog, normalize_name


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_load_catalog_valid_file(tmp_path):
    path = write(
        tmp_path,
        """
discover: false
models:
  - name: llama3.1:8b
    aliases: [llama3.1, llama]
    upstream: meta-llama/Llama-3.1-8B-Instruct
    context_length: 131072
    capabilities: [completion, tools]
    fallback: llava:7b
    family: llama
    request_defaults:
      temperature: 0.2
  - name: qwen-coder
    upstream: Qwen/Qwen2.5-Coder-1.5B
    fim: qwen2.5-coder
    capabilities: [completion, insert]
  - name: llava:7b
    backend: ollama
""",
    )
    catalog = load_catalog(path)
    assert catalog.discover is False
    assert [m.name for m in catalog.models] == ["llama3.1:8b", "qwen-coder", "llava:7b"]
    llama, coder, llava = catalog.models
    assert llama.aliases == ("llama3.1", "llama")
    assert llama.upstream_id == "meta-llama/Llama-3.1-8B-Instruct"
    assert llama.context_length == 131072
    assert llama.capabilities == ("completion", "tools")
    assert llama.request_defaults == {"temperature": 0.2}
    assert llama.backend == "vllm"
    assert coder.fim == "qwen2.5-coder"
    assert llava.backend == "ollama"
    assert llava.upstream_id == "llava:7b"  # defaults to the name
    assert llava.capabilities is None


def test_load_catalog_empty_file_is_empty_catalog_with_discovery(tmp_path):
    catalog = load_catalog(write(tmp_path, ""))
    assert catalog.models == []
    assert catalog.discover is True


def test_load_catalog_missing_file_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_load_catalog_invalid_yaml_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models: [name: a\n  - : :"))
    assert "YAML" in str(info.value)


def test_load_catalog_top_level_list_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "- name: a\n"))
    assert "models" in str(info.value)


def test_load_catalog_unknown_field_names_entry_and_field(tmp_path):
    path = write(tmp_path, "models:\n  - name: ok\n  - name: tiny\n    contxt_length: 2048\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert "tiny" in message
    assert "contxt_length" in message
    assert "#2" in message


def test_load_catalog_unknown_top_level_field_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "modles: []\n"))
    assert "modles" in str(info.value)


def test_load_catalog_wrong_field_type_names_entry_and_field(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models:\n  - name: tiny\n    context_length: lots\n"))
    assert "tiny" in str(info.value)
    assert "context_length" in str(info.value)


def test_load_catalog_zero_context_length_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models:\n  - name: tiny\n    context_length: 0\n"))
    assert "context_length" in str(info.value)


def test_load_catalog_unknown_capability_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models:\n  - name: tiny\n    capabilities: [completion, telepathy]\n"))
    assert "capabilities" in str(info.value)


def test_load_catalog_unknown_backend_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models:\n  - name: tiny\n    backend: tgi\n"))
    assert "backend" in str(info.value)


def test_load_catalog_missing_name_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models:\n  - upstream: tiny\n"))
    assert "name" in str(info.value)


@pytest.mark.parametrize(
    "models",
    [
        "  - name: tiny\n  - name: tiny\n",
        "  - name: tiny\n  - name: other\n    aliases: [tiny]\n",
        "  - name: a\n    aliases: [shared]\n  - name: b\n    aliases: [shared]\n",
        "  - name: Tiny\n  - name: tiny:latest\n",  # Ollama names are case-insensitive, :latest implied
    ],
)
def test_load_catalog_duplicate_names_across_entries_is_catalog_error(tmp_path, models):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models:\n" + models))
    assert "already used" in str(info.value)


def test_load_catalog_unknown_fim_template_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models:\n  - name: coder\n    fim: santacoder-9000\n"))
    message = str(info.value)
    assert "coder" in message
    assert "fim" in message
    assert "santacoder-9000" in message


@pytest.mark.parametrize("fim", sorted(FIM_TEMPLATES))
def test_load_catalog_known_fim_templates_are_accepted(tmp_path, fim):
    catalog = load_catalog(write(tmp_path, f"models:\n  - name: coder\n    fim: {fim}\n"))
    assert catalog.models[0].fim == fim


def test_load_catalog_fallback_on_ollama_entry_is_catalog_error(tmp_path):
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models:\n  - name: llava\n    backend: ollama\n    fallback: other\n"))
    message = str(info.value)
    assert "llava" in message
    assert "fallback" in message


def test_model_entry_is_frozen():
    entry = ModelEntry(name="tiny")
    with pytest.raises(ValueError):
        entry.name = "other"  # type: ignore[misc]


def test_catalog_model_validate_plain_dict():
    catalog = Catalog.model_validate({"models": [{"name": "tiny", "upstream": "org/tiny"}]})
    assert catalog.models[0].upstream_id == "org/tiny"


@pytest.mark.parametrize(
    ("name", "key"),
    [("tiny", "tiny"), ("Tiny:Latest", "tiny"), ("llama3.2:1b", "llama3.2:1b"), ("  LLAMA3.2  ", "llama3.2")],
)
def test_normalize_name_case_insensitive_latest_implied(name, key):
    assert normalize_name(name) == key
