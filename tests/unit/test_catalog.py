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


# ---- backends and canaries (issue 13) -------------------------------------------------------------
# (Imports here, not at the top: this part was appended to the file as it stood.)

import math  # noqa: E402
import random  # noqa: E402
import zlib  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any, cast  # noqa: E402

from adapter.balancing import LOAD_BOUND, Backend, Replica  # noqa: E402


def test_load_catalog_backends_replicas_keys_limits_and_canary(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
backends:
  big:
    replicas: [http://vllm-big-0:8000/v1, "http://vllm-big-1:8000/"]
    api_key: secret
    max_inflight: 16
  next:
    replicas: [https://next.example:8443]
models:
  - name: big-model
    backend: big
    canary: {backend: next, share: 2.5}
""",
    )
    catalog = load_catalog(path)
    big = catalog.backends["big"]
    # The gateway adds /v1 itself; trailing slashes go.
    assert big.replicas == ("http://vllm-big-0:8000", "http://vllm-big-1:8000")
    assert big.api_key == "secret" and big.max_inflight == 16
    assert catalog.backends["next"].api_key is None and catalog.backends["next"].max_inflight is None
    entry = catalog.models[0]
    assert entry.backend == "big"
    assert entry.canary is not None and (entry.canary.backend, entry.canary.share) == ("next", 2.5)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message, message  # one line: it is the whole of what `python -m adapter` prints
    return message


@pytest.mark.parametrize(
    ("backend", "needles"),
    [
        ("replicas: []", ("'pool'", "replicas")),
        ("replicas: [vllm-0:8000]", ("'pool'", "replicas", "http")),
        ("replicas: ['ftp://vllm-0:8000']", ("'pool'", "replicas", "ftp://vllm-0:8000")),
        ("replicas: ['http://vllm-0:eighty']", ("'pool'", "replicas", "port")),
        ("replicas: ['http://:8000']", ("'pool'", "replicas")),
        ("replicas: [http://a:8000, http://a:8000/v1]", ("'pool'", "replicas", "twice")),
        ("replicas: [http://a:8000]\n    max_inflight: 0", ("'pool'", "max_inflight")),
        ("replicas: [http://a:8000]\n    api_kee: x", ("'pool'", "api_kee")),
        ("{}", ("'pool'", "replicas")),
    ],
)
def test_load_catalog_bad_backend_names_backend_and_field(
    tmp_path: Path, backend: str, needles: tuple[str, ...]
) -> None:
    message = _error(tmp_path, f"backends:\n  pool:\n    {backend}\nmodels:\n  - name: m\n    backend: pool\n")
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize("name", ["vllm", "ollama"])
def test_load_catalog_reserved_backend_names(tmp_path: Path, name: str) -> None:
    message = _error(tmp_path, f"backends:\n  {name}:\n    replicas: [http://a:8000]\n")
    assert name in message and "reserved" in message


def test_load_catalog_model_on_unknown_backend_names_model_field_and_backend(tmp_path: Path) -> None:
    message = _error(
        tmp_path, "backends:\n  pool:\n    replicas: [http://a:8000]\nmodels:\n  - name: m\n    backend: poool\n"
    )
    assert "'m'" in message and "backend" in message and "'poool'" in message
    assert "pool" in message  # the known ones are listed


@pytest.mark.parametrize(
    ("canary", "needles"),
    [
        ("{backend: next, share: 101}", ("'m'", "canary.share", "100")),
        ("{backend: next, share: -5}", ("'m'", "canary.share", "0")),
        ("{backend: next, share: lots}", ("'m'", "canary.share")),
        ("{backend: nxt, share: 5}", ("'m'", "canary.backend", "'nxt'")),
        ("{backend: main, share: 5}", ("'m'", "canary.backend", "own backend")),
        ("{backend: ollama, share: 5}", ("'m'", "canary.backend")),
        ("{share: 5}", ("'m'", "canary.backend")),
        ("{backend: next, share: 5, sticky: true}", ("'m'", "canary.sticky")),
    ],
)
def test_load_catalog_bad_canary_names_model_and_field(tmp_path: Path, canary: str, needles: tuple[str, ...]) -> None:
    message = _error(
        tmp_path,
        "backends:\n  main:\n    replicas: [http://a:8000]\n  next:\n    replicas: [http://b:8000]\n"
        f"models:\n  - name: m\n    backend: main\n    canary: {canary}\n",
    )
    for needle in needles:
        assert needle in message, (needle, message)


def test_load_catalog_canary_share_bounds_are_inclusive(tmp_path: Path) -> None:
    for share in (0, 100, 0.5):
        catalog = load_catalog(
            write(
                tmp_path,
                "backends:\n  next:\n    replicas: [http://b:8000]\n"
                f"models:\n  - name: m\n    canary: {{backend: next, share: {share}}}\n",
            )
        )
        assert catalog.models[0].canary is not None and catalog.models[0].canary.share == share


def test_load_catalog_canary_on_ollama_model_is_catalog_error(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        "backends:\n  next:\n    replicas: [http://b:8000]\n"
        "models:\n  - name: llava\n    backend: ollama\n    canary: {backend: next, share: 5}\n",
    )
    assert "llava" in message and "canary" in message


def test_load_catalog_duplicate_model_across_backends_names_both(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        "backends:\n  a:\n    replicas: [http://a:8000]\n  b:\n    replicas: [http://b:8000]\n"
        "models:\n  - name: m\n    backend: a\n  - name: M:latest\n    backend: b\n",
    )
    assert "'m'" in message and "already used" in message


def test_example_policy_catalog_is_valid() -> None:
    """examples/models-policy.yaml, as shipped (tests/test_backends.py runs it against stand-ins)."""
    catalog = load_catalog(Path(__file__).resolve().parents[2] / "examples" / "models-policy.yaml")
    assert len(catalog.backends["vllm-mixtral"].replicas) == 2
    by_name = {m.name: m for m in catalog.models}
    assert by_name["qwen2.5-14b-instruct"].canary is not None
    assert by_name["qwen2.5-14b-instruct"].canary.share == 5


# ---- balancing: which replica a request tries first (adapter.balancing) ---------------------------


def _replicas(loads: list[int], backend: str = "b") -> list[Replica]:
    """Replicas with given outstanding counts; only the parts balancing reads are filled in."""
    replicas = []
    for i, load in enumerate(loads):
        upstream = SimpleNamespace(base_url=f"http://r{i}:8000", limiter=SimpleNamespace(inflight=load, queued=0))
        replicas.append(Replica(backend, cast(Any, upstream)))
    return replicas


def _set_load(replica: Replica, load: int) -> None:
    cast(Any, replica.upstream).limiter.inflight = load


def test_candidates_skip_down_replicas_and_try_them_last() -> None:
    replicas = _replicas([0, 0, 0])
    replicas[1].health.set("unhealthy", "engine dead")
    backend = Backend("b", replicas, discovered=False)
    for key in (None, 1, 2**31, 12345):
        order = backend.candidates("m", key)
        assert order[-1] is replicas[1] and set(order) == set(replicas)
    # Every replica down: they are all still tried, least loaded first (a probe may be stale).
    for replica in replicas:
        replica.health.set("unreachable")
    _set_load(replicas[0], 3)
    order = backend.candidates("m", None)
    assert order[-1] is replicas[0] and len(order) == 3


def test_candidates_without_key_fewest_outstanding_ties_in_turn() -> None:
    replicas = _replicas([2, 0, 1])
    backend = Backend("b", replicas, discovered=False)
    assert backend.candidates("m", None)[0] is replicas[1]
    assert [r.load for r in backend.candidates("m", None)] == [0, 1, 2]  # then by load: the retry target
    idle = _replicas([0, 0, 0])
    backend = Backend("b", idle, discovered=False)
    firsts = [backend.candidates("m", None)[0] for _ in range(6)]
    assert all(firsts.count(r) == 2 for r in idle)


def test_candidates_with_key_stay_home_within_the_load_bound() -> None:
    replicas = _replicas([0, 0, 0, 0])
    backend = Backend("b", replicas, discovered=False)
    rng = random.Random(13)
    for _ in range(200):
        key = rng.getrandbits(32)
        home = backend.candidates("m", key)[0]
        assert backend.candidates("m", key)[0] is home  # the same prefix, the same replica
        for replica in replicas:  # random loads: the first choice never passes the bound
            _set_load(replica, rng.randrange(0, 12))
        total = sum(r.load for r in replicas)
        bound = math.ceil(LOAD_BOUND * (total + 1) / len(replicas))
        first = backend.candidates("m", key)[0]
        assert first.load + 1 <= bound or first.load == min(r.load for r in replicas)
        if home.load + 1 <= bound:
            assert first is home  # within the bound it stays where its prefix is cached
        for replica in replicas:
            _set_load(replica, 0)


def test_candidates_keys_spread_over_replicas() -> None:
    replicas = _replicas([0, 0, 0])
    backend = Backend("b", replicas, discovered=False)
    homes = [backend.candidates("m", zlib.crc32(f"prefix {i}".encode()))[0] for i in range(300)]
    assert all(homes.count(r) > 50 for r in replicas)  # 160 virtual nodes each: roughly even thirds


def test_discovered_backend_serves_a_model_on_the_replicas_that_list_it() -> None:
    replicas = _replicas([0, 0, 0])
    replicas[0].models = frozenset({"a"})
    replicas[1].models = frozenset({"a", "b"})
    replicas[2].models = frozenset({"c"})
    backend = Backend("vllm", replicas, discovered=True)
    assert backend.serving("a") == replicas[:2]
    assert backend.serving("c") == [replicas[2]]
    assert backend.serving("unknown") == replicas  # nobody said: every server may try
    assert backend.candidates("c", 7) == [replicas[2]]
    assert Backend("pool", replicas, discovered=False).serving("c") == replicas  # one model group
