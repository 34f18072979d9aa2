"""`python -m adapter` as it runs in production, in a subprocess, with stand-in vLLMs in this process:
a wrong catalog stops it with one line, two backends claiming one model stop it at start, SIGHUP
reloads the catalog (a stream in flight finishes where it started; an invalid file is refused and
the old catalog keeps serving), `canary-check`, and ADAPTER_WORKERS (limits divided, /metrics summed
over the workers, /health the same from any of them).

Every wait polls with a deadline; every process is stopped by the test that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.standins.ollama import OllamaStandin
from tests.standins.server import ServerThread, dead_port, free_port
from tests.standins.vllm import Script, VLLMStandin
from tests.test_backends import serving

ROOT = Path(__file__).resolve().parent.parent
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def served(standin: VLLMStandin) -> int:
    return sum(1 for r in standin.requests if r["path"] in GENERATION_PATHS)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the gateway's own variables, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ADAPTER_", "VLLM_", "VISION_", "MODEL_ALIASES", "PROMETHEUS_MULTIPROC_DIR"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write_catalog(path: Path, catalog: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


def chat(url: str, model: str, content: str = "hi", **kw: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": False, **kw}
    return httpx.post(url + "/api/chat", json=body, timeout=15)


class Gateway:
    """`python -m adapter ARGS` on a free port; its output goes to a file the test can read."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"gateway-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adapter", "--port", str(self.port), *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/", timeout=1).text == "Ollama is running":
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, f"the gateway exited ({self.proc.returncode}):\n{self.log()}"
            assert time.monotonic() < deadline, f"the gateway did not start:\n{self.log()}"
            time.sleep(0.05)

    def hangup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@contextlib.contextmanager
def gateway(tmp_path: Path, args: list[str], env: dict[str, str]) -> Iterator[Gateway]:
    gw = Gateway(tmp_path, args, env)
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def vision() -> Iterator[ServerThread]:
    with ServerThread(OllamaStandin().app()) as server:
        yield server


@pytest.fixture(scope="module")
def default_vllm() -> Iterator[ServerThread]:
    """VLLM_BASE_URL's server (the `vllm` backend every gateway has)."""
    with ServerThread(VLLMStandin(models=["tiny"]).app()) as server:
        yield server


@pytest.fixture
def env(vision: ServerThread, default_vllm: ServerThread) -> dict[str, str]:
    return clean_env(
        VLLM_BASE_URL=default_vllm.url,
        VISION_OLLAMA_URL=vision.url,
        ADAPTER_MODELS_TTL="0.5",
        ADAPTER_CONNECT_TIMEOUT="2",
        ADAPTER_LOG_LEVEL="info",
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---- a wrong catalog stops the gateway, with one line ------------------------------------------------

BAD_CATALOGS = {
    "unknown backend": (
        "models:\n  - name: m\n    backend: nowhere\n",
        ("'m'", "backend", "'nowhere'"),
    ),
    "duplicate model": (
        "models:\n  - name: m\n  - name: other\n  - name: M\n",
        ("'M'", "'m'", "already used"),
    ),
    "empty replica list": (
        "backends:\n  pool:\n    replicas: []\nmodels:\n  - name: m\n    backend: pool\n",
        ("'pool'", "replicas"),
    ),
    "malformed URL": (
        "backends:\n  pool:\n    replicas: ['http//vllm-0:8000']\nmodels:\n  - name: m\n    backend: pool\n",
        ("'pool'", "replicas", "http//vllm-0:8000"),
    ),
    "canary share above 100": (
        "backends:\n  next:\n    replicas: [http://127.0.0.1:9]\nmodels:\n  - name: m\n"
        "    canary: {backend: next, share: 150}\n",
        ("'m'", "canary.share"),
    ),
    "canary share below 0": (
        "backends:\n  next:\n    replicas: [http://127.0.0.1:9]\nmodels:\n  - name: m\n"
        "    canary: {backend: next, share: -1}\n",
        ("'m'", "canary.share"),
    ),
    "not YAML": ("models:\n  - name: m\n    aliases: [a, b\n  - name: n\n", ("not valid YAML", "line")),
}


@pytest.mark.parametrize("case", list(BAD_CATALOGS))
def test_wrong_catalog_stops_the_gateway_with_one_line(tmp_path: Path, case: str) -> None:
    text, needles = BAD_CATALOGS[case]
    path = tmp_path / "models.yaml"
    path.write_text(text)
    env = clean_env(VLLM_BASE_URL=f"http://127.0.0.1:{dead_port()}")
    proc = subprocess.run(
        [sys.executable, "-m", "adapter", "--models-file", str(path), "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    line = one_line_error(proc)
    assert str(path) in line, line
    for needle in needles:
        assert needle in line, (needle, line)


# ---- two backends claiming one model: an error at start, unless the catalog says which -----------------


def test_model_claimed_by_two_backends_stops_the_start_unless_the_catalog_names_it(
    tmp_path: Path, env: dict[str, str]
) -> None:
    first, second = VLLMStandin(models=["shared", "only-first"]), VLLMStandin(models=["shared"])
    with serving(first, second) as (a, b):
        backends = {"first": {"replicas": [a.url]}, "second": {"replicas": [b.url]}}
        clash = write_catalog(tmp_path / "clash.yaml", {"backends": backends})
        proc = subprocess.run(
            [sys.executable, "-m", "adapter", "--models-file", str(clash), "--port", str(free_port())],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        line = one_line_error(proc)
        assert "'shared'" in line and "'first'" in line and "'second'" in line, line

        named = write_catalog(
            tmp_path / "named.yaml", {"backends": backends, "models": [{"name": "shared", "backend": "second"}]}
        )
        with gateway(tmp_path, ["--models-file", str(named)], env) as gw:
            for i in range(4):
                assert chat(gw.url, "shared", f"q{i}").status_code == 200
            assert chat(gw.url, "only-first").status_code == 200  # discovered on its own backend
            assert (served(first), served(second)) == (1, 4)


# ---- SIGHUP: the live catalog ------------------------------------------------------------------------


def health(gw: Gateway) -> dict[str, Any]:
    return httpx.get(gw.url + "/health", timeout=5).json()  # type: ignore[no-any-return]


def test_sighup_adds_a_backend_and_its_model(tmp_path: Path, env: dict[str, str]) -> None:
    one, two = VLLMStandin(models=["alpha"]), VLLMStandin(models=["beta"])
    with serving(one, two) as (a, b):
        path = write_catalog(
            tmp_path / "models.yaml",
            {
                "discover": False,
                "backends": {"one": {"replicas": [a.url]}},
                "models": [{"name": "alpha", "backend": "one"}],
            },
        )
        with gateway(tmp_path, ["--models-file", str(path)], env) as gw:
            assert chat(gw.url, "alpha").status_code == 200
            assert chat(gw.url, "beta").status_code == 404
            assert set(health(gw)["backends"]) == {"vllm", "one", "ollama_vision"}

            write_catalog(
                path,
                {
                    "discover": False,
                    "backends": {"one": {"replicas": [a.url]}, "two": {"replicas": [b.url]}},
                    "models": [{"name": "alpha", "backend": "one"}, {"name": "beta", "backend": "two"}],
                },
            )
            gw.hangup()
            assert wait_for(lambda: "two" in health(gw)["backends"]), gw.log()
            r = chat(gw.url, "beta")
            assert r.status_code == 200 and r.json()["message"]["content"] == "Hello from beta!"
            assert {m["name"] for m in httpx.get(gw.url + "/api/tags").json()["models"]} >= {
                "alpha:latest",
                "beta:latest",
            }
            assert [u["url"] for u in health(gw)["backends"]["two"]["replicas"]] == [b.url]
            assert chat(gw.url, "alpha").status_code == 200  # the backend that stayed still serves
            assert (served(one), served(two)) == (2, 1)
            assert "catalog reloaded" in gw.log()


def test_stream_in_flight_during_reload_finishes_on_its_backend(tmp_path: Path, env: dict[str, str]) -> None:
    old, new = VLLMStandin(models=["m"]), VLLMStandin(models=["m"])
    tokens = [f"old{i} " for i in range(12)]
    old.script = Script(tokens=tokens, delay=0.1)
    with serving(old, new) as (a, b):
        path = write_catalog(
            tmp_path / "models.yaml",
            {"backends": {"blue": {"replicas": [a.url]}}, "models": [{"name": "m", "backend": "blue"}]},
        )
        with gateway(tmp_path, ["--models-file", str(path)], env) as gw:
            body = {"model": "m", "messages": [{"role": "user", "content": "long answer"}]}
            with httpx.stream("POST", gw.url + "/api/chat", json=body, timeout=20) as stream:
                lines = stream.iter_lines()
                first = json.loads(next(lines))
                assert first["done"] is False
                # Roll forward while the answer streams: the model moves to `green`, `blue` goes.
                write_catalog(
                    path,
                    {"backends": {"green": {"replicas": [b.url]}}, "models": [{"name": "m", "backend": "green"}]},
                )
                gw.hangup()
                assert wait_for(lambda: "blue" not in health(gw)["backends"], timeout=5), gw.log()
                rest = [json.loads(line) for line in lines if line.strip()]
            chunks = [first, *rest]
            assert chunks[-1]["done"] is True and not any("error" in c for c in chunks), chunks[-3:]
            assert "".join(c["message"]["content"] for c in chunks) == "".join(tokens)
            assert (served(old), served(new)) == (1, 0)

            r = chat(gw.url, "m")  # the next request goes where the new catalog says
            assert r.json()["message"]["content"] == "Hello from m!"
            assert (served(old), served(new)) == (1, 1)

            # The dropped replica is closed once its stream is done: its gauges go (its counters stay).
            def blue_gauges() -> list[str]:
                text = httpx.get(gw.url + "/metrics").text
                return [
                    line
                    for line in text.splitlines()
                    if line.startswith(("ollama_adapter_inflight_requests", "ollama_adapter_queued_requests"))
                    and f'replica="{a.url}"' in line
                ]

            assert wait_for(lambda: not blue_gauges(), timeout=5), blue_gauges()
            assert f'ollama_adapter_replica_requests_total{{backend="blue",replica="{a.url}"}} 1.0' in (
                httpx.get(gw.url + "/metrics").text
            )


def test_invalid_catalog_on_reload_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, env: dict[str, str]
) -> None:
    one = VLLMStandin(models=["alpha"])
    with ServerThread(one.app()) as a:
        good = {"backends": {"one": {"replicas": [a.url]}}, "models": [{"name": "alpha", "backend": "one"}]}
        path = write_catalog(tmp_path / "models.yaml", good)
        with gateway(tmp_path, ["--models-file", str(path)], env) as gw:
            assert chat(gw.url, "alpha").status_code == 200
            bad = {
                "backends": {"one": {"replicas": [a.url]}},
                "models": [{"name": "alpha", "backend": "one"}, {"name": "beta", "backend": "nowhere"}],
            }
            for attempt, (catalog, needles) in enumerate(
                [
                    (bad, ("'beta'", "backend", "'nowhere'")),
                    ({"backends": {"one": {"replicas": []}}}, ("'one'", "replicas")),
                ]
            ):
                write_catalog(path, catalog)
                gw.hangup()

                def refused(n: int = attempt + 1) -> bool:
                    return gw.log().count("catalog reload refused") >= n

                assert wait_for(refused), gw.log()
                line = [line for line in gw.log().splitlines() if "catalog reload refused" in line][-1]
                for needle in needles:
                    assert needle in line, (needle, line)
                assert gw.proc.poll() is None
                r = chat(gw.url, "alpha", f"still here {attempt}")
                assert r.status_code == 200 and r.json()["message"]["content"] == "Hello from alpha!"
                assert set(health(gw)["backends"]) == {"vllm", "one", "ollama_vision"}
            assert served(one) == 3


# ---- canary-check --------------------------------------------------------------------------------------


def canary_check(path: Path, model: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", "canary-check", model, "--models-file", str(path), "--timeout", "10"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def canary_catalog(tmp_path: Path, canary: VLLMStandin) -> Iterator[tuple[Path, VLLMStandin]]:
    main = VLLMStandin(models=["m"])
    with serving(main, canary) as (a, b):
        path = write_catalog(
            tmp_path / "models.yaml",
            {
                "backends": {"main": {"replicas": [a.url]}, "next": {"replicas": [b.url]}},
                "models": [
                    {"name": "m", "backend": "main", "canary": {"backend": "next", "share": 5}},
                    {"name": "plain", "backend": "main", "upstream": "m"},
                ],
            },
        )
        yield path, main


def test_canary_check_passes_on_a_canary_that_answers_well(tmp_path: Path, env: dict[str, str]) -> None:
    canary = VLLMStandin(models=["m"])
    canary.script = Script(tokens=['{"answer": ', '"hello"}'])  # JSON: the `format` check parses it
    with canary_catalog(tmp_path, canary) as (path, main):
        proc = canary_check(path, "m", env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for check in ("chat", "streamed chat", "format", "tools"):
            assert f"ok    {check}:" in proc.stdout, proc.stdout
        assert "every check passed" in proc.stdout
        # Only the canary was asked, through the gateway's translation (vLLM's OpenAI requests).
        assert served(main) == 0 and served(canary) == 4
        bodies = [r["body"] for r in canary.requests if r["path"] == "/v1/chat/completions"]
        assert all(b["model"] == "m" and b["stream"] is True for b in bodies)
        assert any(b.get("response_format") for b in bodies)  # format -> a JSON schema for vLLM
        assert any(b.get("tools") for b in bodies)


@pytest.mark.parametrize(
    "fault",
    [Script(error_status=500, error_message="engine crashed"), Script(garbage=b"data: {not json\n\n")],
    ids=["500", "garbage"],
)
def test_canary_check_fails_naming_the_failed_checks(tmp_path: Path, env: dict[str, str], fault: Script) -> None:
    canary = VLLMStandin(models=["m"])
    canary.script = fault
    with canary_catalog(tmp_path, canary) as (path, main):
        proc = canary_check(path, "m", env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        last = proc.stdout.strip().splitlines()[-1]
        assert last.startswith("canary-check m: failed:"), proc.stdout
        for check in ("chat", "streamed chat", "format", "tools"):
            assert f"FAIL  {check}:" in proc.stdout, proc.stdout
            assert check in last
        assert served(main) == 0 and served(canary) > 0


def test_canary_check_without_a_canary_exits_2(tmp_path: Path, env: dict[str, str]) -> None:
    with canary_catalog(tmp_path, VLLMStandin(models=["m"])) as (path, main):
        for model in ("plain", "not-in-the-catalog"):
            proc = canary_check(path, model, env)
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert model in proc.stdout and "no canary" in proc.stdout
        assert served(main) == 0


# ---- ADAPTER_WORKERS -----------------------------------------------------------------------------------


def chat_requests_per_worker(directory: Path, status: str | None = None) -> dict[str, float]:
    """pid -> /api/chat requests that worker answered (with `status`, if given), from
    prometheus-client's per-process files."""
    found = {}
    for db in directory.glob("counter_*.db"):
        pid = db.stem.removeprefix("counter_")
        total = 0.0
        for family in MultiProcessCollector.merge([str(db)], accumulate=False):
            for s in family.samples:
                if (
                    s.name == "ollama_adapter_requests_total"
                    and s.labels.get("endpoint") == "/api/chat"
                    and (status is None or s.labels.get("status") == status)
                ):
                    total += s.value
        found[pid] = total
    return found


def metric_sum(text: str, sample: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_workers_share_one_port_and_metrics_add_up(tmp_path: Path, env: dict[str, str]) -> None:
    upstream = VLLMStandin(models=["tiny"])
    shared = tmp_path / "metrics"
    shared.mkdir()
    with ServerThread(upstream.app()) as a:
        env = {
            **env,
            "VLLM_BASE_URL": a.url,
            "ADAPTER_WORKERS": "2",
            "ADAPTER_HEALTH_INTERVAL": "0.2",
            # Set here so the test can read each worker's own file; the gateway makes one if unset.
            "PROMETHEUS_MULTIPROC_DIR": str(shared),
        }
        with gateway(tmp_path, [], env) as gw:
            sent = 0
            # New connections are spread by the kernel between the workers: send until both answered.
            while sent < 300:
                with httpx.Client(base_url=gw.url, timeout=10) as http:  # a connection of its own
                    r = http.post(
                        "/api/chat",
                        json={"model": "tiny", "messages": [{"role": "user", "content": f"n{sent}"}], "stream": False},
                    )
                assert r.status_code == 200, r.text
                sent += 1
                per_worker = chat_requests_per_worker(shared)
                if sent >= 20 and len([n for n in per_worker.values() if n]) >= 2:
                    break
            per_worker = chat_requests_per_worker(shared)
            assert len([n for n in per_worker.values() if n]) == 2, per_worker

            def totals_match() -> bool:
                text = httpx.get(gw.url + "/metrics").text
                return (
                    metric_sum(text, "ollama_adapter_requests_total", endpoint="/api/chat", status="200") == sent
                    and metric_sum(text, "ollama_adapter_replica_requests_total", backend="vllm") == sent
                )

            # Whichever worker answers /metrics, it sums every worker's counts.
            for _ in range(6):
                assert wait_for(totals_match, timeout=5), httpx.get(gw.url + "/metrics").text
            assert served(upstream) == sent

            # /health answers the same from any worker (each has its own monitor: wait until both saw it).
            def same_everywhere() -> bool:
                answers = [health(gw) for _ in range(10)]
                return (
                    all(h["status"] == "ok" for h in answers)
                    and len({json.dumps(sorted(h["backends"])) for h in answers}) == 1
                )

            assert wait_for(same_everywhere)


def test_workers_divide_the_limits(tmp_path: Path, env: dict[str, str]) -> None:
    """ADAPTER_MAX_INFLIGHT=2 and no queue, over 2 workers: each worker holds at most one request
    upstream, whatever share of a burst it gets (undivided, a worker would hold two)."""
    upstream = VLLMStandin(models=["tiny"])
    upstream.script = Script(first_delay=0.6)  # the burst is all in flight together
    shared = tmp_path / "metrics"
    shared.mkdir()
    with ServerThread(upstream.app()) as a:
        env = {
            **env,
            "VLLM_BASE_URL": a.url,
            "ADAPTER_WORKERS": "2",
            "ADAPTER_MAX_INFLIGHT": "2",
            "ADAPTER_MAX_QUEUE": "0",
            "PROMETHEUS_MULTIPROC_DIR": str(shared),
        }
        with gateway(tmp_path, [], env) as gw:

            async def burst() -> list[int]:
                async def one(i: int) -> int:
                    async with httpx.AsyncClient(timeout=15) as http:  # a connection each
                        body = {"model": "tiny", "messages": [{"role": "user", "content": f"b{i}"}], "stream": False}
                        return (await http.post(gw.url + "/api/chat", json=body)).status_code

                return list(await asyncio.gather(*(one(i) for i in range(8))))

            statuses = asyncio.run(burst())
            assert set(statuses) <= {200, 503}, statuses
            assert 1 <= statuses.count(200) <= 2, statuses
            assert wait_for(lambda: sum(chat_requests_per_worker(shared).values()) == 8)
            answered = chat_requests_per_worker(shared)
            ok = chat_requests_per_worker(shared, "200")
            # 8 requests over 2 workers: some worker got several, and still held only one.
            assert max(answered.values()) >= 2
            for pid, count in answered.items():
                assert ok.get(pid, 0) == (1 if count else 0), (answered, ok)


def inflight_per_worker(directory: Path) -> dict[int, float]:
    """pid -> requests that worker holds upstream, from its own live gauge file."""
    found = {}
    for db in directory.glob("gauge_livesum_*.db"):
        total = 0.0
        for family in MultiProcessCollector.merge([str(db)], accumulate=False):
            total += sum(s.value for s in family.samples if s.name == "ollama_adapter_inflight_requests")
        found[int(db.stem.rsplit("_", 1)[1])] = total
    return found


def test_a_dead_worker_leaves_no_requests_in_flight_behind(tmp_path: Path, env: dict[str, str]) -> None:
    """A worker killed while it holds a stream (the OOM killer, a crash) is replaced, and its in-flight
    count leaves /metrics with it: the sum over live workers says 0 again, not 1 for ever."""
    upstream = VLLMStandin(models=["tiny"])
    upstream.script = Script(tokens=[f"t{i} " for i in range(200)], delay=0.1)  # 20 s: outlives the test
    shared = tmp_path / "metrics"
    shared.mkdir()
    with ServerThread(upstream.app()) as a:
        env = {**env, "VLLM_BASE_URL": a.url, "ADAPTER_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(shared)}
        with gateway(tmp_path, [], env) as gw:

            def inflight() -> float:
                return metric_sum(httpx.get(gw.url + "/metrics").text, "ollama_adapter_inflight_requests")

            body = {"model": "tiny", "messages": [{"role": "user", "content": "long"}]}
            with httpx.stream("POST", gw.url + "/api/chat", json=body, timeout=30) as stream:
                lines = stream.iter_lines()
                first = next(lines)
                holding = [pid for pid, n in inflight_per_worker(shared).items() if n == 1]
                assert len(holding) == 1, (first, inflight_per_worker(shared))
                assert inflight() == 1
                os.kill(holding[0], signal.SIGKILL)
                with pytest.raises(httpx.HTTPError):
                    for _ in lines:
                        pass
            # The supervisor starts a new worker; the dead one's gauges go with it.
            assert wait_for(lambda: holding[0] not in inflight_per_worker(shared)), inflight_per_worker(shared)
            assert inflight() == 0
            upstream.script = Script()
            assert wait_for(lambda: chat(gw.url, "tiny").status_code == 200)
            assert "died" in gw.log(), gw.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_previous_runs_gauges_are_not_counted(tmp_path: Path, env: dict[str, str], workers: str) -> None:
    """A PROMETHEUS_MULTIPROC_DIR of the operator's own outlives the gateway (a pod's emptyDir when its
    container restarts): the in-flight count a previous run left there is not added to this run's."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    leftover = "from adapter.metrics import Metrics; Metrics().inflight.labels('vllm', 'http://gone').set(3)"
    subprocess.run([sys.executable, "-c", leftover], env={**env, "PROMETHEUS_MULTIPROC_DIR": str(shared)}, check=True)
    assert sum(inflight_per_worker(shared).values()) == 3
    env = {**env, "ADAPTER_WORKERS": workers, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    with gateway(tmp_path, [], env) as gw:
        text = httpx.get(gw.url + "/metrics").text
        assert metric_sum(text, "ollama_adapter_inflight_requests") == 0, text


def test_workers_reload_on_sighup_without_cutting_streams(tmp_path: Path, env: dict[str, str]) -> None:
    """SIGHUP to `python -m adapter` with ADAPTER_WORKERS=2 reloads the catalog as one process does: the
    new model is served by every worker, and a stream in flight finishes whole (it outlasts the 5 s a
    stopping worker would be given)."""
    slow, fresh = VLLMStandin(models=["alpha"]), VLLMStandin(models=["beta"])
    tokens = [f"t{i} " for i in range(40)]
    slow.script = Script(tokens=tokens, delay=0.2)  # 8 s
    with serving(slow, fresh) as (a, b):
        one = {"one": {"replicas": [a.url]}}
        path = write_catalog(
            tmp_path / "models.yaml", {"backends": one, "models": [{"name": "alpha", "backend": "one"}]}
        )
        with gateway(tmp_path, ["--models-file", str(path), "--workers", "2"], env) as gw:
            body = {"model": "alpha", "messages": [{"role": "user", "content": "long"}]}
            with httpx.stream("POST", gw.url + "/api/chat", json=body, timeout=30) as stream:
                lines = stream.iter_lines()
                first = json.loads(next(lines))
                write_catalog(
                    path,
                    {
                        "backends": {**one, "two": {"replicas": [b.url]}},
                        "models": [{"name": "alpha", "backend": "one"}, {"name": "beta", "backend": "two"}],
                    },
                )
                gw.hangup()
                # Every worker serves the new catalog (new connections reach both).
                assert wait_for(lambda: all(chat(gw.url, "beta").status_code == 200 for _ in range(6))), gw.log()
                try:
                    rest = [json.loads(line) for line in lines if line.strip()]
                except httpx.HTTPError as exc:
                    pytest.fail(f"the stream in flight was cut by the reload: {exc!r}")
            chunks = [first, *rest]
            assert chunks[-1]["done"] is True and not any("error" in c for c in chunks), chunks[-2:]
            assert "".join(c["message"]["content"] for c in chunks) == "".join(tokens)


def test_workers_refuse_an_invalid_catalog_on_sighup(tmp_path: Path, env: dict[str, str]) -> None:
    """With ADAPTER_WORKERS=2 an invalid file on SIGHUP is refused as with one process: an error line
    naming the entry and field, no traceback, the old catalog serving from every worker."""
    upstream = VLLMStandin(models=["alpha"])
    with ServerThread(upstream.app()) as a:
        one = {"one": {"replicas": [a.url]}}
        path = write_catalog(
            tmp_path / "models.yaml", {"backends": one, "models": [{"name": "alpha", "backend": "one"}]}
        )
        with gateway(tmp_path, ["--models-file", str(path), "--workers", "2"], env) as gw:
            write_catalog(path, {"backends": one, "models": [{"name": "gamma", "backend": "nowhere"}]})
            before = len(gw.log())
            gw.hangup()

            def refused() -> bool:
                new = gw.log()[before:]
                return "'gamma'" in new and "'nowhere'" in new

            assert wait_for(refused), gw.log()[before:]
            assert wait_for(lambda: chat(gw.url, "alpha").status_code == 200)
            for _ in range(6):
                assert chat(gw.url, "alpha").status_code == 200
            assert gw.proc.poll() is None
            assert "Traceback" not in gw.log()[before:], gw.log()[before:]
