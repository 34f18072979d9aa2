"""adapter.config: Settings from the environment, validated once, with messages naming the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adapter.config import Settings, describe_validation_error, parse_aliases


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Settings read the process environment: start every test from none of our variables."""
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
        monkeypatch.delenv(field, raising=False)


def settings_error(monkeypatch, **env: str) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    return describe_validation_error(info.value)


def test_settings_defaults():
    s = Settings()
    assert s.adapter_host == "127.0.0.1"
    assert s.adapter_port == 11434
    assert s.vllm_base_url == "http://localhost:8000"
    assert s.model_aliases == {}
    assert s.adapter_origins == []
    assert s.vllm_api_key is None


# --- VLLM_BASE_URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://vllm:8000", "http://vllm:8000"),
        ("http://vllm:8000/", "http://vllm:8000"),
        ("http://vllm:8000/v1", "http://vllm:8000"),
        ("http://vllm:8000/v1/", "http://vllm:8000"),
        ("https://gpu.example.com/vllm/v1", "https://gpu.example.com/vllm"),
        ("  http://vllm:8000/v1  ", "http://vllm:8000"),
    ],
)
def test_settings_vllm_base_url_trailing_v1_and_slash_stripped(monkeypatch, raw, expected):
    monkeypatch.setenv("VLLM_BASE_URL", raw)
    assert Settings().vllm_base_url == expected


@pytest.mark.parametrize("raw", ["localhost:8000", "vllm", "ftp://vllm:8000", "http://", ""])
def test_settings_vllm_base_url_not_http_is_error_naming_variable(monkeypatch, raw):
    message = settings_error(monkeypatch, VLLM_BASE_URL=raw)
    assert "VLLM_BASE_URL" in message
    assert "http" in message


def test_settings_vllm_base_url_lists_several_servers(monkeypatch):
    # Each is discovered: a model is served by the servers whose /v1/models list it.
    monkeypatch.setenv("VLLM_BASE_URL", " http://a:8000/v1, http://b:8000/ ,,http://c:8001")
    settings = Settings()
    assert settings.vllm_base_urls == ["http://a:8000", "http://b:8000", "http://c:8001"]


@pytest.mark.parametrize("raw", ["http://a:8000,http://a:8000/v1", "http://a:8000,b:8000"])
def test_settings_vllm_base_url_list_errors_name_the_variable(monkeypatch, raw):
    assert "VLLM_BASE_URL" in settings_error(monkeypatch, VLLM_BASE_URL=raw)


@pytest.mark.parametrize("raw", ["http://vllm:99999", "http://vllm:port", "http://vllm:-1"])
def test_settings_vllm_base_url_bad_port_is_error_naming_variable(monkeypatch, raw):
    message = settings_error(monkeypatch, VLLM_BASE_URL=raw)
    assert "VLLM_BASE_URL" in message
    assert "port" in message


def test_settings_vision_url_keeps_path_but_strips_slash(monkeypatch):
    monkeypatch.setenv("VISION_OLLAMA_URL", "http://vision:11434/")
    assert Settings().vision_ollama_url == "http://vision:11434"


def test_settings_vision_url_bad_is_error_naming_variable(monkeypatch):
    assert "VISION_OLLAMA_URL" in settings_error(monkeypatch, VISION_OLLAMA_URL="vision:11434")


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_settings_adapter_port_out_of_range_is_error(monkeypatch, port):
    assert "ADAPTER_PORT" in settings_error(monkeypatch, ADAPTER_PORT=port)


# --- MODEL_ALIASES --------------------------------------------------------------------------------


def test_settings_model_aliases_from_env(monkeypatch):
    monkeypatch.setenv(
        "MODEL_ALIASES", "llama3.1:8b=meta-llama/Llama-3.1-8B-Instruct, qwen = Qwen/Qwen2.5-7B-Instruct ,"
    )
    assert Settings().model_aliases == {
        "llama3.1:8b": "meta-llama/Llama-3.1-8B-Instruct",
        "qwen": "Qwen/Qwen2.5-7B-Instruct",
    }


def test_settings_model_aliases_empty_env_is_empty(monkeypatch):
    monkeypatch.setenv("MODEL_ALIASES", "")
    assert Settings().model_aliases == {}


@pytest.mark.parametrize("raw", ["llama", "a=b,c", "=target", "name=", "a=b, =c"])
def test_settings_model_aliases_malformed_is_error_naming_variable(monkeypatch, raw):
    message = settings_error(monkeypatch, MODEL_ALIASES=raw)
    assert "MODEL_ALIASES" in message
    assert "name=served-model" in message


def test_parse_aliases_good():
    assert parse_aliases("a=b,c=d") == {"a": "b", "c": "d"}
    assert parse_aliases(" a = b ,, c=d ") == {"a": "b", "c": "d"}
    assert parse_aliases(None) == {}
    assert parse_aliases("") == {}
    assert parse_aliases({"a": " b "}) == {"a": "b"}


def test_parse_aliases_target_may_contain_equals_and_colons():
    assert parse_aliases("x:latest=org/model=v2") == {"x:latest": "org/model=v2"}


def test_parse_aliases_malformed_names_the_entry():
    with pytest.raises(ValueError, match="'broken'"):
        parse_aliases("a=b,broken")


# --- ADAPTER_ORIGINS ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://a.example", ["http://a.example"]),
        ("http://a.example, https://b.example:8443 ,", ["http://a.example", "https://b.example:8443"]),
        ("", []),
        (" , ", []),
        ("*", ["*"]),
    ],
)
def test_settings_adapter_origins_list_parsing(monkeypatch, raw, expected):
    monkeypatch.setenv("ADAPTER_ORIGINS", raw)
    assert Settings().adapter_origins == expected


# --- other fields ---------------------------------------------------------------------------------


def test_settings_log_level_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("ADAPTER_LOG_LEVEL", "DEBUG")
    assert Settings().adapter_log_level == "debug"


def test_settings_empty_models_file_means_no_catalog(monkeypatch):
    # `ADAPTER_MODELS_FILE=` in a compose file or .env: no catalog, not the path ".".
    monkeypatch.setenv("ADAPTER_MODELS_FILE", "")
    assert Settings().adapter_models_file is None


def test_settings_empty_api_keys_mean_none(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "")
    monkeypatch.setenv("ADAPTER_API_KEY", "")
    s = Settings()
    assert s.vllm_api_key is None
    assert s.adapter_api_key is None


def test_settings_api_key_is_secret(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sk-abc")
    s = Settings()
    assert s.vllm_api_key.get_secret_value() == "sk-abc"
    assert "sk-abc" not in repr(s)


def test_describe_validation_error_one_line_per_variable(monkeypatch):
    monkeypatch.setenv("VLLM_BASE_URL", "nope")
    monkeypatch.setenv("ADAPTER_PORT", "0")
    with pytest.raises(ValidationError) as info:
        Settings()
    message = describe_validation_error(info.value)
    assert "VLLM_BASE_URL:" in message
    assert "ADAPTER_PORT:" in message
    assert "Value error, " not in message
    assert "\n" not in message
