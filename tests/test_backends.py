"""Many vLLM servers behind one gateway (issue 13), over HTTP, against several stand-in vLLMs.

Backends and replicas (VLLM_BASE_URL as a list, the catalog's `backends`), one model list across
them, balancing between replicas (fewest outstanding, prefix affinity within the load bound, health,
one retry on another replica), the canary share, faults (every replica down, one backend down) and
the task-routing policy shipped in examples/models-policy.yaml.

Where a request landed is read from each stand-in's `requests` and from the per-replica metric.
Spread and affinity checks are exact only where the gateway's choice is (sequential requests, or
requests held at a gate until all have been placed); nothing here asserts a latency except the
"one backend down never slows the others" check, which compares against a connect timeout many times
larger than any answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import Response

from adapter.balancing import LOAD_BOUND
from tests.conftest import make_settings, running_gateway
from tests.standins.ollama import OllamaStandin
from tests.standins.server import ServerThread, dead_port
from tests.standins.vllm import VLLMStandin
from tests.test_faults import Unaccepting

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "examples" / "models-policy.yaml"
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
# Longer than the affinity prefix (2048 characters): requests that share it share their key.
SYSTEM = "You are the summarisation service. " + "Follow the house style guide to the letter. " * 60


@dataclass
class GatedVLLM(VLLMStandin):
    """A stand-in whose generation requests wait at a gate: they stay in flight in the gateway until
    the test opens it, so where each one was placed can be read while all of them are outstanding."""

    gate: threading.Event = field(default_factory=threading.Event)

    async def completions(self, request: Request) -> Response:
        while not self.gate.is_set():  # noqa: ASYNC110 (opened from the test's thread, not this loop's)
            await asyncio.sleep(0.01)
        return await super().completions(request)


# ---- helpers -------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@contextlib.contextmanager
def serving(*standins: VLLMStandin) -> Iterator[list[ServerThread]]:
    """Each stand-in on its own port; all stopped together on exit (stopping one twice is harmless)."""
    started: list[ServerThread] = []
    try:
        for standin in standins:
            started.append(ServerThread(standin.app()).start())
        yield started
    finally:
        for thread in started:
            thread.server.should_exit = True  # all at once: each takes a tick of uvicorn's loop to stop
        for thread in started:
            thread.stop()


def served(standin: VLLMStandin) -> int:
    """Generation requests that reached this stand-in."""
    return sum(1 for r in standin.requests if r["path"] in GENERATION_PATHS)


def messages(content: str, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": content}]


def chat(
    http: httpx.Client, model: str, content: str, *, system: str | None = None, stream: bool = False
) -> httpx.Response:
    body = {"model": model, "messages": messages(content, system), "stream": stream}
    return http.post("/api/chat", json=body)


def text_of(r: httpx.Response) -> str:
    """The answer's text, streamed (NDJSON) or whole."""
    if r.headers.get("content-type", "").startswith("application/x-ndjson"):
        lines = [httpx.Response(200, content=line).json() for line in r.content.splitlines() if line.strip()]
        assert lines[-1]["done"] is True, lines[-1]
        return "".join(line["message"]["content"] for line in lines)
    return str(r.json()["message"]["content"])


def metric(text: str, sample: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted labels: value} for one sample name in a /metrics exposition."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def replica_requests(text: str) -> dict[tuple[str, str], float]:
    """(backend, replica URL) -> ollama_adapter_replica_requests_total."""
    values = metric(text, "ollama_adapter_replica_requests_total")
    return {(dict(k)["backend"], dict(k)["replica"]): v for k, v in values.items()}


def replicas_of(health: dict[str, Any], backend: str) -> dict[str, dict[str, Any]]:
    return {r["url"]: r for r in health["backends"][backend]["replicas"]}


def write_catalog(tmp_path: Path, catalog: dict[str, Any]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def vision_thread() -> Iterator[tuple[OllamaStandin, ServerThread]]:
    standin = OllamaStandin()
    with ServerThread(standin.app()) as server:
        yield standin, server


@pytest.fixture
def vision(vision_thread: tuple[OllamaStandin, ServerThread]) -> OllamaStandin:
    standin = vision_thread[0]
    standin.reset()
    standin.models = {"llava:7b": "llava", "nomic-embed-text:latest": "nomic-bert"}
    return standin


@pytest.fixture
def vision_url(vision: OllamaStandin, vision_thread: tuple[OllamaStandin, ServerThread]) -> str:
    return vision_thread[1].url


# ---- VLLM_BASE_URL as a list: each server discovered --------------------------------------------


def test_servers_with_different_models_are_one_endpoint_for_all(vision_url: str) -> None:
    alpha = VLLMStandin(models=["alpha"], max_model_len=4096)
    beta = VLLMStandin(models=["beta-7b"], max_model_len=8192)
    with serving(alpha, beta) as (a, b):
        settings = make_settings(f"{a.url},{b.url}", vision_url, model_aliases="b=beta-7b")
        with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=10) as http:
            tags = {m["name"] for m in http.get("/api/tags").json()["models"]}
            assert {"alpha:latest", "beta-7b:latest", "b:latest", "llava:7b", "nomic-embed-text:latest"} <= tags
            ps = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
            assert ps["alpha:latest"]["context_length"] == 4096
            assert ps["beta-7b:latest"]["context_length"] == 8192
            openai = {m["id"] for m in http.get("/v1/models").json()["data"]}
            assert {"alpha", "beta-7b", "llava:7b"} <= openai
            # Each model's own max_model_len, from the server that serves it.
            for name, length in (("alpha", 4096), ("beta-7b", 8192), ("b", 8192)):
                info = http.post("/api/show", json={"model": name}).json()["model_info"]
                assert info["general.context_length"] == length, name

            for i in range(3):
                assert text_of(chat(http, "alpha", f"a{i}")) == "Hello from alpha!"
                assert text_of(chat(http, "beta-7b", f"b{i}", stream=True)) == "Hello from beta-7b!"
            assert text_of(chat(http, "b", "alias")) == "Hello from beta-7b!"  # MODEL_ALIASES still works
            r = http.post(
                "/v1/chat/completions", json={"model": "alpha", "messages": messages("openai"), "stream": False}
            )
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello from alpha!"
            # A model is served by exactly the servers that list it.
            assert served(alpha) == 4 and served(beta) == 4
            assert {r["body"]["model"] for r in alpha.requests} == {"alpha"}
            assert {r["body"]["model"] for r in beta.requests} == {"beta-7b"}


def test_servers_listing_one_model_are_its_replicas_and_share_sequential_load(vision_url: str) -> None:
    one, two = VLLMStandin(models=["tiny"]), VLLMStandin(models=["tiny"])
    with serving(one, two) as (a, b):
        with running_gateway(make_settings(f"{a.url},{b.url}", vision_url)) as url:
            with httpx.Client(base_url=url, timeout=10) as http:
                for i in range(40):  # distinct prompts: distinct affinity keys
                    r = chat(http, "tiny", f"question number {i}: what is {i} squared?")
                    assert r.status_code == 200, r.text
                assert served(one) + served(two) == 40
                assert served(one) > 0 and served(two) > 0, (served(one), served(two))
                # Requests without a prompt prefix (no affinity key) alternate between idle replicas.
                before = (served(one), served(two))
                for _ in range(10):
                    assert chat(http, "tiny", "").status_code == 200
                assert (served(one) - before[0], served(two) - before[1]) == (5, 5)
                # Listed once, although two servers list it.
                assert [m["name"] for m in http.get("/api/tags").json()["models"]].count("tiny:latest") == 1
                counts = replica_requests(http.get("/metrics").text)
                assert counts[("vllm", a.url)] == served(one)
                assert counts[("vllm", b.url)] == served(two)
                health = http.get("/health").json()
                assert set(replicas_of(health, "vllm")) == {a.url, b.url}


def test_shared_prompt_prefix_stays_on_one_replica_across_apis(vision_url: str) -> None:
    one, two = VLLMStandin(models=["tiny"]), VLLMStandin(models=["tiny"])
    with serving(one, two) as (a, b):
        with running_gateway(make_settings(f"{a.url},{b.url}", vision_url)) as url:
            with httpx.Client(base_url=url, timeout=10) as http:
                for i in range(10):
                    assert chat(http, "tiny", f"document {i}", system=SYSTEM).status_code == 200
                    assert chat(http, "tiny", f"document {i}", system=SYSTEM, stream=True).status_code == 200
                    body = {"model": "tiny", "messages": messages(f"document {i}", SYSTEM)}
                    assert http.post("/v1/chat/completions", json=body).status_code == 200
                counts = sorted((served(one), served(two)))
                assert counts == [0, 30], counts  # one replica holds the prefix in its cache
                home = one if served(one) else two
                other = two if home is one else one
                # Another prefix is free to live elsewhere; the first one stays home.
                for i in range(20):
                    assert chat(http, "tiny", "x", system=f"{i} " + SYSTEM).status_code == 200
                assert served(home) + served(other) == 50
                assert served(other) > 0  # 20 other prefixes: not all homed on the same replica
                before = served(home)
                assert chat(http, "tiny", "again", system=SYSTEM).status_code == 200
                assert served(home) == before + 1


def _outstanding(
    url: str, backend: str, total: int, bodies: list[dict[str, Any]], gates: list[GatedVLLM]
) -> tuple[dict[str, int], list[httpx.Response]]:
    """Send `bodies` at once to stand-ins held at their gates; once all `total` are in flight in the
    gateway, read /health's per-replica in-flight counts, then open the gates."""

    async def run() -> tuple[dict[str, int], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            tasks = [asyncio.create_task(http.post("/api/chat", json=b)) for b in bodies]
            try:
                deadline = time.monotonic() + 10
                while True:
                    health = (await http.get("/health")).json()
                    inflight = {u: r["inflight"] for u, r in replicas_of(health, backend).items()}
                    if sum(inflight.values()) == total or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.02)
            finally:
                for gate in gates:
                    gate.gate.set()
            return inflight, list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def test_concurrent_requests_spread_by_outstanding_and_load_bound(vision_url: str) -> None:
    one, two = GatedVLLM(models=["tiny"]), GatedVLLM(models=["tiny"])
    with serving(one, two) as (a, b):
        with running_gateway(make_settings(f"{a.url},{b.url}", vision_url)) as url:
            # No prompt prefix: each request goes to the replica with the fewest outstanding.
            bodies = [{"model": "tiny", "messages": messages(""), "stream": False} for _ in range(8)]
            inflight, results = _outstanding(url, "vllm", 8, bodies, [one, two])
            assert all(r.status_code == 200 for r in results)
            assert sorted(inflight.values()) == [4, 4], inflight

            one.gate.clear()
            two.gate.clear()
            # One shared prefix: its home replica takes it while its load stays within the bound
            # (LOAD_BOUND x the average); the rest spill over to the other replica.
            n = 8
            bodies = [{"model": "tiny", "messages": messages(f"{i}", SYSTEM), "stream": False} for i in range(n)]
            inflight, results = _outstanding(url, "vllm", n, bodies, [one, two])
            assert all(r.status_code == 200 for r in results)
            bound = math.ceil(LOAD_BOUND * n / 2)
            assert sum(inflight.values()) == n
            assert max(inflight.values()) <= bound, inflight
            assert min(inflight.values()) >= 1, inflight  # spread, not piled on the home replica


# ---- health, retries, every replica down ------------------------------------------------------------


def test_unhealthy_replica_is_skipped_until_it_recovers(vision_url: str) -> None:
    one, two = VLLMStandin(models=["tiny"]), VLLMStandin(models=["tiny"])
    with serving(one, two) as (a, b):
        settings = make_settings(f"{a.url},{b.url}", vision_url, adapter_health_interval=0.1)
        with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=10) as http:
            two.healthy = False  # its engine died: /health answers 503, the port still accepts
            assert wait_for(lambda: replicas_of(http.get("/health").json(), "vllm")[b.url]["status"] == "unhealthy")
            assert http.get("/health").json()["backends"]["vllm"]["status"] == "healthy"  # its best replica
            for i in range(20):
                assert chat(http, "tiny", f"while two is down {i}").status_code == 200
            assert served(two) == 0 and served(one) == 20

            two.healthy = True
            assert wait_for(lambda: replicas_of(http.get("/health").json(), "vllm")[b.url]["status"] == "healthy")
            for i in range(20):
                assert chat(http, "tiny", f"two is back {i}").status_code == 200
            assert served(two) > 0


def test_connect_failure_is_retried_once_on_another_replica(vision_url: str) -> None:
    one, two = VLLMStandin(models=["tiny"]), VLLMStandin(models=["tiny"])
    with serving(one, two) as (a, b):
        # A long health interval: only the request itself can find out that `two` died.
        settings = make_settings(f"{a.url},{b.url}", vision_url, adapter_health_interval=60)
        with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=10) as http:
            assert wait_for(
                lambda: {r["status"] for r in replicas_of(http.get("/health").json(), "vllm").values()} == {"healthy"}
            )
            assert chat(http, "tiny", "both up").status_code == 200  # discovery done with both listing it
            b.stop()  # dies mid-run
            sent = 0
            # Without a prompt prefix the idle replicas take turns: within two requests `two` is tried.
            while replicas_of(http.get("/health").json(), "vllm")[b.url]["status"] == "healthy" and sent < 4:
                r = chat(http, "tiny", "")
                sent += 1
                assert r.status_code == 200, r.text  # never the client's problem
                assert text_of(r) == "Hello from tiny!"
            assert replicas_of(http.get("/health").json(), "vllm")[b.url]["status"] == "unreachable"
            for i in range(5):  # from now on it is skipped without trying
                assert chat(http, "tiny", f"after {i}").status_code == 200
            text = http.get("/metrics").text
            errors = metric(text, "ollama_adapter_upstream_errors_total")
            connect = {dict(k)["replica"]: v for k, v in errors.items() if dict(k)["kind"] == "connect"}
            assert connect == {b.url: 1.0}, connect
            counts = replica_requests(text)
            assert counts[("vllm", a.url)] == served(one)
            assert served(one) + served(two) == 1 + sent + 5  # every request answered exactly once


def _dead_backend_catalog(tmp_path: Path, urls: list[str]) -> Path:
    return write_catalog(
        tmp_path,
        {"backends": {"pool": {"replicas": urls}}, "models": [{"name": "gone", "backend": "pool", "upstream": "tiny"}]},
    )


@pytest.mark.parametrize("mode", ["chat", "ingestion"])
def test_every_replica_down_is_an_error_naming_model_and_replicas(tmp_path: Path, vision_url: str, mode: str) -> None:
    alive = VLLMStandin(models=["tiny"])
    dead = Unaccepting()  # connecting times out
    refused = f"http://127.0.0.1:{dead_port()}"  # connecting is refused
    try:
        with serving(alive) as (a,):
            urls = [refused, f"http://127.0.0.1:{dead.port}"]
            settings = make_settings(
                a.url,
                vision_url,
                adapter_connect_timeout=0.3,
                adapter_models_file=_dead_backend_catalog(tmp_path, urls),
                adapter_mode=mode,
            )
            status = 502 if mode == "chat" else 503
            with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=15) as http:
                for stream in (False, True):
                    r = chat(http, "gone", "anyone?", stream=stream)
                    assert r.status_code == status, r.text
                    error = r.json()["error"]
                    assert "gone" in error or "tiny" in error, error
                    for replica in urls:
                        assert replica in error, error
                body = {"model": "gone", "messages": messages("anyone?")}
                r = http.post("/v1/chat/completions", json=body)
                assert r.status_code == status
                assert all(replica in r.json()["error"]["message"] for replica in urls), r.text
                # The other backend is not affected.
                assert text_of(chat(http, "tiny", "still here")) == "Hello from tiny!"
    finally:
        dead.close()


def test_every_discovered_server_down_is_a_502_naming_them(vision_url: str) -> None:
    urls = [f"http://127.0.0.1:{dead_port()}", f"http://127.0.0.1:{dead_port()}"]
    with running_gateway(make_settings(",".join(urls), vision_url)) as url:
        with httpx.Client(base_url=url, timeout=15) as http:
            r = chat(http, "tiny", "anyone?")
            assert r.status_code == 502, r.text
            error = r.json()["error"]
            assert all(u in error for u in urls), error
            assert "tiny" in error, error


LISTING_CALLS = ("/api/tags", "/api/ps", "/v1/models")


def test_one_backend_down_never_slows_listing_or_the_others(tmp_path: Path, vision_url: str) -> None:
    """A backend whose port never accepts costs a connect timeout per attempt; no listing and no
    request for another backend waits for it, from the very first call after start on (whether
    that is a listing or a request for a discovered model). Compared with the same gateway without
    that backend; the connect timeout (3 s) dwarfs any answer here."""
    connect_timeout = 3.0
    alpha, beta = VLLMStandin(models=["alpha"]), VLLMStandin(models=["beta"])
    dead = Unaccepting()
    try:
        with serving(alpha, beta) as (a, b):

            def timings(backends: dict[str, Any], first: str) -> list[tuple[str, float]]:
                catalog = write_catalog(tmp_path, {"backends": backends, "models": [{"name": "beta", "backend": "b"}]})
                settings = make_settings(
                    a.url,
                    vision_url,
                    adapter_models_file=catalog,
                    adapter_connect_timeout=connect_timeout,
                    adapter_models_ttl=0.2,
                )
                spent: list[tuple[str, float]] = []

                def timed(what: str, call: Callable[[], None]) -> None:
                    start = time.monotonic()
                    call()
                    spent.append((f"{first} first: {what}", time.monotonic() - start))

                def listing(path: str) -> None:
                    r = http.get(path)
                    assert r.status_code == 200 and "alpha" in r.text and "beta" in r.text, r.text

                def discovered() -> None:
                    assert text_of(chat(http, "alpha", "discovered")) == "Hello from alpha!"

                with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
                    for round_ in range(2):
                        if first == "discovered model":
                            timed(f"{round_} discovered chat", discovered)
                        for path in LISTING_CALLS:
                            timed(f"{round_} {path}", lambda path=path: listing(path))
                        timed(f"{round_} discovered chat", discovered)
                        timed(f"{round_} catalog chat", lambda: chat(http, "beta", "named").raise_for_status())
                        time.sleep(0.25)  # the listings go stale (TTL 0.2 s): the next round asks again
                return spent

            healthy = timings({"b": {"replicas": [b.url]}}, "/api/tags")
            limit = max(t for _, t in healthy) + connect_timeout / 2
            with_dead = {"b": {"replicas": [b.url]}, "dead": {"replicas": [f"http://127.0.0.1:{dead.port}"]}}
            slowed = [
                (what, round(t, 2))
                for first in ("/api/tags", "discovered model")
                for what, t in timings(with_dead, first)
                if t > limit
            ]
            assert not slowed, f"waited for the dead backend: {slowed}"
    finally:
        dead.close()


# ---- catalog backends ------------------------------------------------------------------------------


def test_catalog_backends_keys_and_in_flight_limits(tmp_path: Path, vision_url: str) -> None:
    default = VLLMStandin(models=["tiny"])
    keyed = VLLMStandin(models=["keyed-model"])
    plain = VLLMStandin(models=["plain-model"])
    narrow = GatedVLLM(models=["narrow-model"])
    with serving(default, keyed, plain, narrow) as (d, k, p, n):
        catalog = write_catalog(
            tmp_path,
            {
                "backends": {
                    "keyed": {"replicas": [k.url], "api_key": "backend-key"},
                    "plain": {"replicas": [p.url]},
                    "narrow": {"replicas": [n.url], "max_inflight": 1},
                },
                "models": [
                    {"name": "keyed-model", "backend": "keyed"},
                    {"name": "plain-model", "backend": "plain"},
                    {"name": "narrow-model", "backend": "narrow"},
                ],
            },
        )
        settings = make_settings(
            d.url, vision_url, adapter_models_file=catalog, vllm_api_key="global-key", adapter_max_queue=0
        )
        with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=10) as http:
            for model in ("tiny", "keyed-model", "plain-model"):
                assert chat(http, model, "hi").status_code == 200
            auth = {
                name: s.requests[-1]["headers"].get("authorization")
                for name, s in (("default", default), ("keyed", keyed), ("plain", plain))
            }
            assert auth["default"] == "Bearer global-key"
            assert auth["keyed"] == "Bearer backend-key"  # its own key, only to its own replicas
            # A backend without its own key is sent VLLM_API_KEY, like every other vLLM server.
            assert auth["plain"] == "Bearer global-key"

            # max_inflight 1 per replica, no queue: a second request while one is held is refused.
            async def two_at_once() -> tuple[httpx.Response, httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                    body = {"model": "narrow-model", "messages": messages("slow"), "stream": False}
                    first = asyncio.create_task(client.post("/api/chat", json=body))
                    try:
                        deadline = time.monotonic() + 10
                        while (await client.get("/health")).json()["backends"]["narrow"]["inflight"] != 1:
                            assert time.monotonic() < deadline
                            await asyncio.sleep(0.02)
                        second = await client.post("/api/chat", json=body)
                    finally:
                        narrow.gate.set()
                    return await first, second

            first, second = asyncio.run(two_at_once())
            assert first.status_code == 200
            assert second.status_code == 503 and "server busy" in second.json()["error"]
            # The limit is the narrow backend's own: another backend is not affected.
            assert chat(http, "keyed-model", "meanwhile").status_code == 200


def test_health_and_metrics_show_every_backend_and_replica(tmp_path: Path, vision_url: str) -> None:
    default = VLLMStandin(models=["tiny"])
    r0, r1 = VLLMStandin(models=["big"]), VLLMStandin(models=["big"])
    down = f"http://127.0.0.1:{dead_port()}"
    with serving(default, r0, r1) as (d, a, b):
        catalog = write_catalog(
            tmp_path,
            {
                "backends": {"big": {"replicas": [a.url, b.url]}, "spare": {"replicas": [down]}},
                "models": [{"name": "big", "backend": "big"}],
            },
        )
        settings = make_settings(d.url, vision_url, adapter_models_file=catalog, adapter_health_interval=0.1)
        with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=10) as http:
            for i in range(12):
                assert chat(http, "big", f"q{i}").status_code == 200
            assert wait_for(lambda: http.get("/health").json()["backends"]["spare"]["status"] == "starting")
            r = http.get("/health")
            health = r.json()
            assert r.status_code == 200 and health["status"] == "degraded"  # one backend is down
            assert set(health["backends"]) == {"vllm", "big", "spare", "ollama_vision"}
            assert set(replicas_of(health, "big")) == {a.url, b.url}
            assert set(replicas_of(health, "vllm")) == {d.url}
            assert replicas_of(health, "spare")[down]["status"] == "starting"
            for replica in health["backends"]["big"]["replicas"]:
                assert replica["status"] == "healthy"
                assert {"inflight", "queued", "since", "checked_at"} <= set(replica)

            text = http.get("/metrics").text
            counts = replica_requests(text)
            assert counts[("big", a.url)] == served(r0)
            assert counts[("big", b.url)] == served(r1)
            assert counts[("big", a.url)] + counts[("big", b.url)] == 12
            for gauge in ("ollama_adapter_inflight_requests", "ollama_adapter_queued_requests"):
                labels = {(dict(k)["backend"], dict(k)["replica"]) for k in metric(text, gauge)}
                assert {("big", a.url), ("big", b.url), ("spare", down), ("vllm", d.url)} <= labels, gauge


def test_model_two_backends_serve_goes_where_the_catalog_says(tmp_path: Path, vision_url: str) -> None:
    default = VLLMStandin(models=["tiny"])
    first, second = VLLMStandin(models=["shared"]), VLLMStandin(models=["shared"])
    with serving(default, first, second) as (d, a, b):
        catalog = write_catalog(
            tmp_path,
            {
                "backends": {"first": {"replicas": [a.url]}, "second": {"replicas": [b.url]}},
                "models": [{"name": "shared", "backend": "second"}],
            },
        )
        with running_gateway(make_settings(d.url, vision_url, adapter_models_file=catalog)) as url:
            with httpx.Client(base_url=url, timeout=10) as http:
                for i in range(6):
                    assert chat(http, "shared", f"q{i}").status_code == 200
                assert (served(first), served(second)) == (0, 6)
                assert [m["name"] for m in http.get("/api/tags").json()["models"]].count("shared:latest") == 1


# share % -> requests sent, and which of them (1-based) must reach the canary: evenly spaced.
CANARY_SHARES = {5: (40, [20, 40]), 25: (8, [4, 8]), 50: (6, [2, 4, 6]), 0: (10, []), 100: (4, [1, 2, 3, 4])}


def test_canary_gets_exactly_its_share_evenly_spaced(tmp_path: Path, vision_url: str) -> None:
    """One model per share (one count per model, shared by its names and APIs)."""
    ids = [f"m{share}" for share in CANARY_SHARES]
    default, main, trial = VLLMStandin(models=["tiny"]), VLLMStandin(models=ids), VLLMStandin(models=ids)
    with serving(default, main, trial) as (d, a, b):
        catalog = write_catalog(
            tmp_path,
            {
                "backends": {"main": {"replicas": [a.url]}, "next": {"replicas": [b.url]}},
                "models": [
                    {
                        "name": f"m{share}",
                        "aliases": [f"task{share}"],
                        "backend": "main",
                        "canary": {"backend": "next", "share": share},
                    }
                    for share in CANARY_SHARES
                ],
            },
        )
        with running_gateway(make_settings(d.url, vision_url, adapter_models_file=catalog)) as url:
            with httpx.Client(base_url=url, timeout=10) as http:
                for share, (sent, expected) in CANARY_SHARES.items():
                    landed = []
                    for i in range(1, sent + 1):
                        before = served(trial)
                        if i % 2:
                            r = chat(http, f"task{share}", f"q{i}")
                        else:
                            body = {"model": f"m{share}", "messages": messages(f"q{i}")}
                            r = http.post("/v1/chat/completions", json=body)
                        assert r.status_code == 200, r.text
                        if served(trial) > before:
                            landed.append(i)
                    assert landed == expected, (share, landed)
                assert served(main) + served(trial) == sum(sent for sent, _ in CANARY_SHARES.values())
                assert {r["body"]["model"] for r in trial.requests} == {"m5", "m25", "m50", "m100"}


# ---- examples/models-policy.yaml: the runbook's task routing -------------------------------------------

POLICY_MODELS = {
    "vllm-mixtral-0": ["mixtral-8x7b-instruct"],
    "vllm-mixtral-1": ["mixtral-8x7b-instruct"],
    "vllm-qwen": ["qwen2.5-14b-instruct"],
    "vllm-qwen-canary": ["qwen2.5-14b-instruct"],
    "vllm-nemo": ["mistral-nemo"],
}
POLICY_VISION = {
    "llama3.1:8b-instruct-q4_K_M": "llama",
    "phi3:3.8b-mini-4k-instruct-q4_K_M": "phi3",
    "llava:7b": "llava",
    "nomic-embed-text:latest": "nomic-bert",
}


@dataclass
class Policy:
    url: str
    standins: dict[str, VLLMStandin]
    threads: dict[str, ServerThread]
    vision: OllamaStandin

    def served(self, host: str) -> int:
        return served(self.standins[host])


@contextlib.contextmanager
def policy_gateway(tmp_path: Path, vision: OllamaStandin, vision_url: str, **overrides: Any) -> Iterator[Policy]:
    """examples/models-policy.yaml as shipped, its compose hostnames rewritten to stand-ins."""
    raw = yaml.safe_load(POLICY.read_text())
    hosts = {u.split("//")[1].split(":")[0] for spec in raw["backends"].values() for u in spec["replicas"]}
    assert hosts == set(POLICY_MODELS), hosts  # the test knows every server the file names
    standins = {host: VLLMStandin(models=models) for host, models in POLICY_MODELS.items()}
    vision.models = dict(POLICY_VISION)
    with serving(*standins.values()) as threads:
        by_host = dict(zip(standins, threads, strict=True))
        for spec in raw["backends"].values():
            spec["replicas"] = [by_host[u.split("//")[1].split(":")[0]].url for u in spec["replicas"]]
        catalog = write_catalog(tmp_path, raw)
        # VLLM_BASE_URL's servers stay the `vllm` backend: pointed at one of the catalog's servers.
        settings = make_settings(by_host["vllm-nemo"].url, vision_url, adapter_models_file=catalog, **overrides)
        with running_gateway(settings) as url:
            yield Policy(url, standins, by_host, vision)


def test_policy_lists_every_model_with_its_context(tmp_path: Path, vision: OllamaStandin, vision_url: str) -> None:
    with policy_gateway(tmp_path, vision, vision_url) as policy, httpx.Client(base_url=policy.url) as http:
        tags = {m["name"] for m in http.get("/api/tags").json()["models"]}
        expected = {
            "mixtral-8x7b-instruct:latest",
            "reasoning:latest",
            "qwen2.5-14b-instruct:latest",
            "summarisation:latest",
            "mistral-nemo:latest",
            "llama3.1-8b-instruct:latest",
            "phi3-mini-4k:latest",
        }
        assert expected <= tags, expected - tags
        assert len([t for t in tags if t.startswith("mistral-nemo")]) == 1  # VLLM_BASE_URL lists it too
        for name, length in (
            ("mixtral-8x7b-instruct", 32768),
            ("reasoning", 32768),
            ("qwen2.5-14b-instruct", 16384),
            ("summarisation", 16384),
            ("mistral-nemo", 8192),
        ):
            r = http.post("/api/show", json={"model": name})
            assert r.status_code == 200, (name, r.text)
            assert r.json()["model_info"]["general.context_length"] == length, name
        ps = {m["name"]: m["context_length"] for m in http.get("/api/ps").json()["models"]}
        assert ps["reasoning:latest"] == 32768 and ps["mistral-nemo:latest"] == 8192
        openai = {m["id"] for m in http.get("/v1/models").json()["data"]}
        names = {t.removesuffix(":latest") for t in expected}
        assert names <= openai, names - openai


def test_policy_tasks_land_where_the_runbook_says(tmp_path: Path, vision: OllamaStandin, vision_url: str) -> None:
    with policy_gateway(tmp_path, vision, vision_url) as policy, httpx.Client(base_url=policy.url) as http:
        for i in range(20):
            r = chat(http, "reasoning", f"prove lemma {i}")
            assert r.status_code == 200 and r.json()["model"] == "reasoning"
        assert policy.served("vllm-mixtral-0") + policy.served("vllm-mixtral-1") == 20
        assert policy.served("vllm-mixtral-0") > 0 and policy.served("vllm-mixtral-1") > 0

        for i in range(40):
            assert chat(http, "summarisation", f"summarise report {i}").status_code == 200
        assert (policy.served("vllm-qwen"), policy.served("vllm-qwen-canary")) == (38, 2)  # 5%

        assert text_of(chat(http, "mistral-nemo", "hi")) == "Hello from mistral-nemo!"
        assert policy.served("vllm-nemo") == 1

        for name, upstream in (
            ("llama3.1-8b-instruct", "llama3.1:8b-instruct-q4_K_M"),
            ("phi3-mini-4k", "phi3:3.8b-mini-4k-instruct-q4_K_M"),
        ):
            r = chat(http, name, "hi")
            assert r.status_code == 200 and text_of(r) == "I see a cat"
            assert policy.vision.requests[-1]["body"]["model"] == upstream
        assert policy.served("vllm-mixtral-0") + policy.served("vllm-mixtral-1") == 20  # nothing else went there


def test_policy_fallbacks_when_a_backend_is_down(tmp_path: Path, vision: OllamaStandin, vision_url: str) -> None:
    fallback_after = 0.3
    with (
        policy_gateway(
            tmp_path, vision, vision_url, adapter_health_interval=0.1, adapter_fallback_after=fallback_after
        ) as policy,
        httpx.Client(base_url=policy.url, timeout=10) as http,
    ):
        # Both mixtral replicas unhealthy (engine dead, port open): once down for
        # ADAPTER_FALLBACK_AFTER, reasoning is answered by its fallback on Ollama Vision.
        policy.standins["vllm-mixtral-0"].healthy = False
        policy.standins["vllm-mixtral-1"].healthy = False

        def mixtral_down_long_enough() -> bool:
            replicas = http.get("/health").json()["backends"]["vllm-mixtral"]["replicas"]
            return all(r["status"] == "unhealthy" and time.time() - r["since"] > fallback_after for r in replicas)

        assert wait_for(mixtral_down_long_enough)
        for stream in (False, True):
            r = chat(http, "reasoning", "prove it", stream=stream)
            assert r.status_code == 200 and text_of(r) == "I see a cat"
            assert policy.vision.requests[-1]["body"]["model"] == "llama3.1:8b-instruct-q4_K_M"
        assert policy.served("vllm-mixtral-0") + policy.served("vllm-mixtral-1") == 0

        # qwen's only server stopped (connection refused): summarisation falls back to phi3-mini-4k.
        policy.threads["vllm-qwen"].stop()
        for i in range(5):
            r = chat(http, "summarisation", f"summarise {i}")
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "summarisation" and text_of(r) == "I see a cat"
            assert policy.vision.requests[-1]["body"]["model"] == "phi3:3.8b-mini-4k-instruct-q4_K_M"
        # The other tasks never noticed.
        assert text_of(chat(http, "mistral-nemo", "hi")) == "Hello from mistral-nemo!"

        # mixtral recovers: reasoning goes back to it.
        policy.standins["vllm-mixtral-0"].healthy = True
        assert wait_for(lambda: http.get("/health").json()["backends"]["vllm-mixtral"]["status"] == "healthy")
        assert chat(http, "reasoning", "again").status_code == 200
        assert policy.served("vllm-mixtral-0") == 1
