"""Fixtures of the real-vLLM tier: a real vLLM CPU server (tiny model) with the gateway in front.

Prepare once with ``tests/engine/setup_vllm.sh`` (``.ci/run`` does), then:

    .venv/bin/python -m pytest tests/engine -m engine -x -q

Without the engine (venv + model under ``$ADAPTER_ENGINE_HOME``) the tier is skipped loudly;
with ``ADAPTER_REQUIRE_ENGINE=1`` a missing engine is a failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vllm_server

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_START_TIMEOUT = 60.0
TIMINGS: dict[str, float] = {}
LOGS: dict[str, Path] = {}  # server logs, shown with every failing test
# Gateway settings that would make the tier depend on the caller's environment.
_GATEWAY_ENV_KEEP = ("ADAPTER_LOG_LEVEL",)
_GATEWAY_ENV_DROP = ("MODEL_ALIASES", "VLLM_API_KEY", "VLLM_BASE_URL", "VISION_OLLAMA_URL")


@dataclass(frozen=True)
class Gateway:
    base_url: str
    vllm_url: str
    log_path: Path


def _require_engine() -> bool:
    return os.environ.get("ADAPTER_REQUIRE_ENGINE", "").strip().lower() in ("1", "true", "yes", "on")


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> vllm_server.Engine:
    """The engine venv + tiny model made by setup_vllm.sh; skip (or fail) loudly when absent."""
    try:
        return vllm_server.find_engine()
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
def vllm(engine: vllm_server.Engine) -> Iterator[vllm_server.VllmServer]:
    """A real vLLM OpenAI server for the whole session (log: $ADAPTER_ENGINE_HOME/logs/tier-vllm.log)."""
    srv = vllm_server.VllmServer(engine, log_path=engine.home / "logs" / "tier-vllm.log")
    try:
        srv.start()
    except vllm_server.ServerFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    TIMINGS["vLLM start-up (s)"] = srv.startup_seconds or 0.0
    LOGS["vLLM"] = srv.log_path
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def gateway(vllm: vllm_server.VllmServer) -> Iterator[Gateway]:
    """The gateway (``python -m adapter``) in front of the real vLLM, Ollama Vision unreachable
    (log: $ADAPTER_ENGINE_HOME/logs/tier-gateway.log)."""
    port = vllm_server.free_port()
    log_path = vllm.engine.home / "logs" / "tier-gateway.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("ADAPTER_") or k in _GATEWAY_ENV_KEEP) and k not in _GATEWAY_ENV_DROP
    }
    # A catalog entry that forces tool calls (what an extraction deployment configures), so the
    # unchanged `ollama` client, which has no tool_choice, can be shown a forced call.
    catalog = vllm.engine.home / "logs" / "tier-models.yaml"
    catalog.write_text(
        "models:\n"
        "  - name: tiny-tools\n"
        "    upstream: tiny\n"
        "    request_defaults:\n"
        "      tool_choice: {type: function, function: {name: get_weather}}\n"
        "    strict_tools: true\n"
    )
    env.update(
        ADAPTER_MODELS_FILE=str(catalog),
        VLLM_BASE_URL=vllm.base_url,
        VISION_OLLAMA_URL=f"http://127.0.0.1:{vllm_server.closed_port()}",
        PYTHONUNBUFFERED="1",
    )
    t0 = time.monotonic()
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
    TIMINGS["gateway start-up (s)"] = time.monotonic() - t0
    LOGS["gateway"] = log_path
    try:
        yield Gateway(base_url=base_url, vllm_url=vllm.base_url, log_path=log_path)
    finally:
        vllm_server.stop_process_group(proc, grace=10)


@pytest.fixture(autouse=True)
def _vllm_stays_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """vLLM exits on any fatal engine error: say so (with its log) instead of a bare connection error."""
    yield
    if "vllm" in request.fixturenames:
        srv: vllm_server.VllmServer = request.getfixturevalue("vllm")
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
