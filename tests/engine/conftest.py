"""Fixtures of the real-vLLM tier: real vLLM CPU servers with the gateway in front.

``vllm``/``gateway`` serve the tiny random model (a template under our control: tool calls,
thinking); test_real_model.py adds SmolLM2-135M-Instruct, the model ./scripts/serve.sh serves.
The launcher is the product's own (scripts/engine/vllm_server.py).

Prepare once with ``tests/engine/setup_vllm.sh`` (``.ci/run`` does), then:

    .venv/bin/python -m pytest tests/engine -m engine -x -q

Without the engine (venv + models under ``$ADAPTER_ENGINE_HOME``) the tier is skipped loudly;
with ``ADAPTER_REQUIRE_ENGINE=1`` a missing engine is a failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "engine"))

import vllm_server

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_START_TIMEOUT = 60.0
TIMINGS: dict[str, float] = {}
LOGS: dict[str, Path] = {}  # server logs, shown with every failing test
# Gateway settings that would make the tier depend on the caller's environment.
_GATEWAY_ENV_KEEP = ("ADAPTER_LOG_LEVEL",)
_GATEWAY_ENV_DROP = ("MODEL_ALIASES", "VLLM_API_KEY", "VLLM_BASE_URL", "VISION_OLLAMA_URL")


# The tiny random Llama of make_tiny_model.py: hermes tool calling and thinking in its template.
TINY = vllm_server.ModelSpec(
    served_name="tiny",
    subdir="model",
    marker=".generator-sha256",
    installer="tests/engine/setup_vllm.sh",
    dtype="float32",
    max_model_len=2048,
    kv_cache_bytes="128M",
    extra_args=vllm_server.TOOL_ARGS,
)


@dataclass(frozen=True)
class Gateway:
    base_url: str
    vllm_url: str
    log_path: Path


def _require_engine() -> bool:
    return os.environ.get("ADAPTER_REQUIRE_ENGINE", "").strip().lower() in ("1", "true", "yes", "on")


def engine_or_skip(request: pytest.FixtureRequest, spec: vllm_server.ModelSpec) -> vllm_server.Engine:
    """The engine venv with ``spec``'s model installed; skip (or fail) loudly when either is absent."""
    try:
        engine = vllm_server.find_engine()
        vllm_server.find_model(engine, spec)
        return engine
    except vllm_server.EngineMissing as exc:
        reason = f"real-vLLM tier NOT RUN: {exc}"
        if _require_engine():
            pytest.fail(f"ADAPTER_REQUIRE_ENGINE is set but {reason}", pytrace=False)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(f"WARNING: {reason}", yellow=True, bold=True)
        warnings.warn(reason, pytest.PytestWarning, stacklevel=1)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> vllm_server.Engine:
    """The engine venv + tiny model made by setup_vllm.sh; skip (or fail) loudly when absent."""
    return engine_or_skip(request, TINY)


@pytest.fixture(scope="session")
def vllm(engine: vllm_server.Engine) -> Iterator[vllm_server.VllmServer]:
    """A real vLLM OpenAI server for the whole session (log: $ADAPTER_ENGINE_HOME/logs/tier-vllm.log)."""
    srv = started_vllm(engine, TINY, "tier-vllm.log")
    TIMINGS["vLLM start-up (s)"] = srv.startup_seconds or 0.0
    LOGS["vLLM"] = srv.log_path
    try:
        yield srv
    finally:
        srv.stop()


@contextmanager
def gateway_process(vllm_url: str, log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[Gateway]:
    """``python -m adapter`` on a free port in front of ``vllm_url``, Ollama Vision unreachable;
    fails the test (with its log) if it does not come up."""
    port = vllm_server.free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("ADAPTER_") or k in _GATEWAY_ENV_KEEP) and k not in _GATEWAY_ENV_DROP
    }
    env.update(
        VLLM_BASE_URL=vllm_url,
        VISION_OLLAMA_URL=f"http://127.0.0.1:{vllm_server.closed_port()}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "adapter", "--host", "127.0.0.1", "--port", str(port)],
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=vllm_server.die_with_parent,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        vllm_server.wait_healthy(f"{base_url}/", proc, log_path, GATEWAY_START_TIMEOUT, "gateway (python -m adapter)")
    except vllm_server.ServerFailed as exc:
        vllm_server.stop_process_group(proc, grace=5)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield Gateway(base_url=base_url, vllm_url=vllm_url, log_path=log_path)
    finally:
        vllm_server.stop_process_group(proc, grace=10)


def started_vllm(engine: vllm_server.Engine, spec: vllm_server.ModelSpec, log_name: str) -> vllm_server.VllmServer:
    srv = vllm_server.VllmServer(engine, spec, log_path=engine.home / "logs" / log_name)
    try:
        srv.start()
    except vllm_server.ServerFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    return srv


@pytest.fixture(scope="session")
def gateway(vllm: vllm_server.VllmServer) -> Iterator[Gateway]:
    """The gateway (``python -m adapter``) in front of the real vLLM, Ollama Vision unreachable
    (log: $ADAPTER_ENGINE_HOME/logs/tier-gateway.log)."""
    # A catalog entry that forces tool calls (what an extraction deployment configures), so the
    # unchanged `ollama` client, which has no tool_choice, can be shown a forced call.
    catalog = vllm.engine.home / "logs" / "tier-models.yaml"
    catalog.parent.mkdir(parents=True, exist_ok=True)
    catalog.write_text(
        "models:\n"
        "  - name: tiny-tools\n"
        "    upstream: tiny\n"
        "    request_defaults:\n"
        "      tool_choice: {type: function, function: {name: get_weather}}\n"
        "    strict_tools: true\n"
    )
    t0 = time.monotonic()
    log_path = vllm.engine.home / "logs" / "tier-gateway.log"
    with gateway_process(vllm.base_url, log_path, {"ADAPTER_MODELS_FILE": str(catalog)}) as gw:
        TIMINGS["gateway start-up (s)"] = time.monotonic() - t0
        LOGS["gateway"] = log_path
        yield gw


# SmolLM2 (what ./scripts/serve.sh serves), for test_real_model.py. Module scope: only that module
# uses it, and its ~2 GB are given back before the tiny-model tests start their own vLLM.
@pytest.fixture(scope="module")
def real_vllm(request: pytest.FixtureRequest) -> Iterator[vllm_server.VllmServer]:
    """vLLM serving smollm2:135m (log: $ADAPTER_ENGINE_HOME/logs/tier-real-vllm.log)."""
    engine = engine_or_skip(request, vllm_server.SMOLLM2)
    srv = started_vllm(engine, vllm_server.SMOLLM2, "tier-real-vllm.log")
    TIMINGS["vLLM start-up, smollm2:135m (s)"] = srv.startup_seconds or 0.0
    LOGS["vLLM (smollm2:135m)"] = srv.log_path
    try:
        yield srv
    finally:
        srv.stop()
        LOGS.pop("vLLM (smollm2:135m)", None)


@pytest.fixture(scope="module")
def real_gateway(real_vllm: vllm_server.VllmServer) -> Iterator[Gateway]:
    """The gateway in front of ``real_vllm`` (log: $ADAPTER_ENGINE_HOME/logs/tier-real-gateway.log)."""
    log_path = real_vllm.engine.home / "logs" / "tier-real-gateway.log"
    with gateway_process(real_vllm.base_url, log_path) as gw:
        LOGS["gateway (smollm2:135m)"] = log_path
        try:
            yield gw
        finally:
            LOGS.pop("gateway (smollm2:135m)", None)


@pytest.fixture(autouse=True)
def _vllm_stays_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """vLLM exits on any fatal engine error: say so (with its log) instead of a bare connection error."""
    yield
    for name in ("vllm", "real_vllm"):
        if name in request.fixturenames:
            srv: vllm_server.VllmServer = request.getfixturevalue(name)
            if not srv.alive():
                pytest.fail(f"the vLLM server died during this test; log tail:\n{srv.log_tail()}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when == "call":
        for name, path in LOGS.items():
            report.sections.append((f"{name} log (last lines of {path})", vllm_server.tail(path, 40)))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "real-vLLM tier timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f}")
