"""Tenants (ADAPTER_API_KEYS_FILE): keys stored as digests, a per-tenant `cache_salt` on every vLLM
request (never on Ollama Vision's), 401 in each API's dialect for an unknown key, the tenant's name
(never its key) in the access log and metrics, `tenant rotate` + SIGHUP changing the salt, and a bad
keys file stopping the gateway with one line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapter.tenants import (
    KeyRing,
    TenantsError,
    cache_salt,
    key_digest,
    load_tenants,
    read_keys_file,
    rotate,
    secrets_path,
)
from tests.conftest import make_settings, running_gateway
from tests.standins.ollama import OllamaStandin
from tests.standins.vllm import VLLMStandin
from tests.test_catalog_live import ROOT, clean_env, gateway, wait_for

KEYS = {"acme": ["acme-key-1", "acme-key-2"], "globex": ["globex-key"]}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "stream": False}


def write_keys(path: Path, keys: dict[str, list[str]] = KEYS) -> Path:
    lines = ["tenants:"]
    for name, plain in keys.items():
        lines.append(f"  {name}:")
        lines += [f"    - {key_digest(k)}" for k in plain]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return write_keys(tmp_path / "keys.yaml")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---- the keys file ---------------------------------------------------------------------------------


def test_digest_is_sha256_hex_of_the_key() -> None:
    # What README gives as the shell way to make one: printf %s KEY | sha256sum
    coreutils = subprocess.run(["sha256sum"], input=b"s3cret", capture_output=True, check=True).stdout.split()[0]
    assert key_digest("s3cret") == "sha256:" + coreutils.decode()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tenants: [unclosed", "not valid YAML at line"),
        ("- just a list\n", "expected one mapping `tenants:`"),
        ("tenants:\n  acme: []\n", "tenant 'acme' needs a list of one or more key digests"),
        (f"tenants:\n  '':\n    - {key_digest('a')}\n", "a tenant has an empty name"),
        (f"tenants:\n  ~:\n    - {key_digest('a')}\n", "a tenant has an empty name"),
        ("tenants:\n  acme:\n    - s3cret\n", "is not a key digest"),
        (f"tenants:\n  a b:\n    - {key_digest('a')}\n", "tenant name 'a b' must be"),
        (
            f"tenants:\n  acme:\n    - {key_digest('k')}\n  globex:\n    - {key_digest('k')}\n",
            "duplicate key: the same key is listed for tenants 'acme' and 'globex'",
        ),
        (f"tenants:\n  acme:\n    - {key_digest('k')}\n    - {key_digest('k')}\n", "listed for tenant 'acme' twice"),
        ("tenants: {}\n", "names no tenant"),
    ],
)
def test_bad_keys_files_are_named_in_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(TenantsError) as info:
        read_keys_file(path)
    assert problem in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_api_key_joins_the_file_as_tenant_default_and_cannot_repeat_one(keys_file: Path) -> None:
    keys = load_tenants(keys_file, "solo-key")
    assert keys is not None and keys.names == ["acme", "default", "globex"]
    default = keys.lookup(b"solo-key")
    assert default is not None and default.name == "default" and default.cache_salt
    with pytest.raises(TenantsError, match="ADAPTER_API_KEY is also a key of tenant 'acme'"):
        load_tenants(keys_file, "acme-key-2")
    # Alone, ADAPTER_API_KEY is one tenant and sends no salt: there is nobody to isolate it from.
    alone = load_tenants(None, "solo-key")
    assert alone is not None and alone.lookup(b"solo-key") == alone.lookup(b"solo-key")
    assert alone.lookup(b"solo-key").cache_salt is None  # type: ignore[union-attr]
    assert alone.lookup(b"wrong") is None
    assert load_tenants(None, None) is None


def test_secrets_are_made_once_kept_private_and_rotated(keys_file: Path) -> None:
    ring = KeyRing(keys_file, None)
    assert ring.keys is not None
    acme, globex = ring.keys.lookup(b"acme-key-1"), ring.keys.lookup(b"globex-key")
    assert acme is not None and globex is not None
    assert ring.keys.lookup(b"acme-key-2") is acme
    assert acme.cache_salt != globex.cache_salt
    # vLLM's rule for a salt: at most 128 characters, none of @ / \ NUL.
    assert acme.cache_salt is not None and len(acme.cache_salt) == 64 and acme.cache_salt.isalnum()
    state = secrets_path(keys_file)
    assert state.stat().st_mode & 0o777 == 0o600
    stored = json.loads(state.read_text())
    assert acme.cache_salt == cache_salt(stored["acme"], "acme")
    assert "acme-key-1" not in state.read_text() + keys_file.read_text()

    ring.reload()  # a restart or reload keeps the salts: cached prefixes stay reachable
    assert ring.keys.lookup(b"acme-key-1") == acme

    rotate(keys_file, "acme")
    ring.reload()
    rotated = ring.keys.lookup(b"acme-key-1")
    assert rotated is not None and rotated.cache_salt != acme.cache_salt
    assert ring.keys.lookup(b"globex-key") == globex  # the others keep theirs
    with pytest.raises(TenantsError, match="no tenant 'initech'"):
        rotate(keys_file, "initech")


# ---- the gateway -------------------------------------------------------------------------------------


@pytest.fixture
def tenant_gateway(
    keys_file: Path, vllm_server: tuple[VLLMStandin, object], vision_server: tuple[OllamaStandin, object]
) -> Iterator[str]:
    vllm_server[0].reset()
    vision_server[0].reset()
    vision_server[0].models = {"llava:7b": "llava", "nomic-embed-text:latest": "nomic-bert"}
    settings = make_settings(vllm_server[1].url, vision_server[1].url, adapter_api_keys_file=str(keys_file))  # type: ignore[attr-defined]
    with running_gateway(settings) as url:
        yield url


def test_each_tenant_s_vllm_requests_carry_its_own_salt(
    tenant_gateway: str, keys_file: Path, vllm: VLLMStandin, vision: OllamaStandin
) -> None:
    keys = load_tenants(keys_file, None)
    assert keys is not None
    salt = {name: keys.lookup(plain[0].encode()).cache_salt for name, plain in KEYS.items()}  # type: ignore[union-attr]
    url = tenant_gateway

    assert httpx.post(url + "/api/chat", json=CHAT, headers=bearer("acme-key-2")).status_code == 200
    assert vllm.requests[-1]["body"]["cache_salt"] == salt["acme"]
    streamed = httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "hi"}, headers=bearer("globex-key"))
    assert streamed.status_code == 200 and b'"done":true' in streamed.content
    assert vllm.requests[-1]["body"]["cache_salt"] == salt["globex"]

    # Relayed /v1 bodies to vLLM too, in place of a salt the client chose (it could be another tenant's).
    openai_body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "cache_salt": salt["globex"]}
    r = httpx.post(url + "/v1/chat/completions", json=openai_body, headers=bearer("acme-key-1"))
    assert r.status_code == 200 and vllm.requests[-1]["body"]["cache_salt"] == salt["acme"]
    # Anthropic's clients send the key as x-api-key.
    anthropic_body = {"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(url + "/v1/messages", json=anthropic_body, headers={"x-api-key": "globex-key"})
    assert r.status_code == 200 and vllm.requests[-1]["body"]["cache_salt"] == salt["globex"]

    # Ollama Vision has no prefix cache to salt, and does not know the field.
    r = httpx.post(url + "/api/embed", json={"model": "nomic-embed-text", "input": "x"}, headers=bearer("acme-key-1"))
    assert r.status_code == 200 and vision.requests[-1]["path"] == "/api/embed"
    assert "cache_salt" not in vision.requests[-1]["body"]


def test_unknown_keys_get_401_in_each_api_s_dialect(tenant_gateway: str, vllm: VLLMStandin) -> None:
    url = tenant_gateway
    r = httpx.post(url + "/api/chat", json=CHAT, headers=bearer("nobody"))
    assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
    assert httpx.get(url + "/api/tags").status_code == 401
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": []}, headers=bearer("acme-key"))
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(url + "/v1/messages", json={}, headers={"x-api-key": "nobody"})
    assert r.status_code == 401 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/").status_code == 200  # the liveness answer stays open
    assert vllm.requests == []


def test_access_log_and_metrics_name_the_tenant_never_the_key(
    tenant_gateway: str, vllm: VLLMStandin, caplog: pytest.LogCaptureFixture
) -> None:
    url = tenant_gateway
    with caplog.at_level(logging.INFO, logger="adapter.access"):
        assert httpx.post(url + "/api/chat", json=CHAT, headers=bearer("acme-key-1")).status_code == 200
        assert httpx.post(url + "/api/chat", json=CHAT, headers=bearer("wrong-key")).status_code == 401
    lines = [orjson.loads(rec.getMessage()) for rec in caplog.records if rec.name == "adapter.access"]
    assert lines[-2]["tenant"] == "acme" and lines[-2]["status"] == 200
    assert "tenant" not in lines[-1] and lines[-1]["status"] == 401
    everything = "\n".join(rec.getMessage() for rec in caplog.records)
    metrics = httpx.get(url + "/metrics", headers=bearer("acme-key-1")).text
    for secret in ("acme-key-1", "wrong-key"):
        assert secret not in everything and secret not in metrics
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    served = [s for s in families["ollama_adapter_requests"].samples if s.labels["endpoint"] == "/api/chat"]
    assert {(s.labels["tenant"], s.labels["status"]) for s in served} >= {("acme", "200"), ("none", "401")}
    tokens = families["ollama_adapter_completion_tokens"].samples
    assert any(s.labels["tenant"] == "acme" and s.value > 0 for s in tokens)


def test_without_keys_nothing_is_salted(gateway: str, vllm: VLLMStandin) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "x"}]}
    assert httpx.post(gateway + "/api/chat", json=body).status_code == 200
    assert "cache_salt" not in vllm.requests[-1]["body"]
    # A client's own salt on /v1 passes through, as before tenants existed.
    r = httpx.post(gateway + "/v1/chat/completions", json={**body, "cache_salt": "mine"})
    assert r.status_code == 200 and vllm.requests[-1]["body"]["cache_salt"] == "mine"


# ---- `python -m adapter`: start-up checks, `tenant rotate` and SIGHUP ----------------------------------


def run_adapter(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("tenants:\n  acme: [oops\n", "not valid YAML"),
        (f"tenants:\n  acme: ['{key_digest('k')}']\n  globex: ['{key_digest('k')}']\n", "duplicate key"),
        (f"tenants:\n  '': ['{key_digest('k')}']\n", "empty name"),
    ],
)
def test_a_bad_keys_file_stops_the_gateway_with_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    proc = run_adapter("--port", "1", env=clean_env(ADAPTER_API_KEYS_FILE=str(path)))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and needle in proc.stderr and "ADAPTER_API_KEYS_FILE" in proc.stderr


def test_hash_key_command(tmp_path: Path) -> None:
    proc = run_adapter("tenant", "hash-key", env=clean_env(), stdin="acme-key-1\n")
    assert proc.returncode == 0 and proc.stdout.strip() == key_digest("acme-key-1")


@pytest.mark.parametrize("workers", [1, 2])
def test_rotate_then_sighup_changes_the_salt_the_gateway_sends(
    workers: int,
    tmp_path: Path,
    keys_file: Path,
    vllm_server: tuple[VLLMStandin, object],
    vision_server: tuple[OllamaStandin, object],
) -> None:
    standin = vllm_server[0]
    env = clean_env(
        ADAPTER_API_KEYS_FILE=str(keys_file),
        VLLM_BASE_URL=vllm_server[1].url,  # type: ignore[attr-defined]
        VISION_OLLAMA_URL=vision_server[1].url,  # type: ignore[attr-defined]
        ADAPTER_WORKERS=str(workers),
    )

    def salt_sent() -> str:
        r = httpx.post(gw.url + "/api/chat", json=CHAT, headers=bearer("globex-key"), timeout=15)
        assert r.status_code == 200, r.text
        return standin.requests[-1]["body"]["cache_salt"]  # type: ignore[no-any-return]

    with gateway(tmp_path, [], env) as gw:
        before = salt_sent()
        assert salt_sent() == before
        proc = run_adapter("tenant", "rotate", "globex", env=env)
        assert proc.returncode == 0 and "SIGHUP" in proc.stdout, proc.stderr
        assert salt_sent() == before  # nothing changes until the gateway reloads
        gw.hangup()
        # Every worker reads the keys again (the main process forwards SIGHUP), then sends the new salt.
        assert wait_for(lambda: gw.log().count("keys reloaded") == workers), gw.log()
        assert before not in {salt_sent() for _ in range(8)}
        # A keys file gone bad on SIGHUP is refused: the keys in force keep working.
        keys_file.write_text("tenants: [broken\n")
        gw.hangup()
        assert wait_for(lambda: gw.log().count("keys reload refused") == workers), gw.log()
        assert salt_sent() != before
    bad = run_adapter("tenant", "rotate", "nobody", env=env)
    assert bad.returncode != 0 and "not valid YAML" in bad.stderr


def test_a_complete_secrets_file_is_only_read(keys_file: Path) -> None:
    """Shared read-only (a Kubernetes Secret): nothing is written or locked next to it."""
    first = load_tenants(keys_file, None)
    state = secrets_path(keys_file)
    for leftover in keys_file.parent.glob("*.lock"):
        leftover.unlink()
    written = state.stat().st_mtime_ns
    again = load_tenants(keys_file, None)
    assert first is not None and again is not None
    assert again.lookup(b"globex-key") == first.lookup(b"globex-key")
    assert state.stat().st_mtime_ns == written and not list(keys_file.parent.glob("*.lock"))
