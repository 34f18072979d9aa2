#!/usr/bin/env bash
# Healthy when the Ollama API answers and entrypoint.sh has every model in VISION_MODELS.
set -euo pipefail
ollama list >/dev/null
test -f "${OLLAMA_VISION_READY_FILE:-/tmp/ollama-vision.ready}"
