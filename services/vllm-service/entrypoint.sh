#!/usr/bin/env bash
# Builds the `vllm serve` command line from the environment and execs it, so that
# SIGTERM from `docker stop` reaches vLLM itself (PID 1) and it shuts down cleanly.
#
#   MODEL_NAME              (required) Hugging Face model id or a local path
#   SERVED_MODEL_NAME       name clients send; default: vLLM uses MODEL_NAME
#   GPU_MEMORY_UTILIZATION  fraction of each GPU's memory vLLM may take (default 0.9)
#   MAX_MODEL_LEN           context length in tokens (default 4096)
#   TENSOR_PARALLEL_SIZE    number of GPUs to shard the model over (default 1)
#   MAX_NUM_SEQS            max concurrent sequences in a batch (default: vLLM's own)
#   HUGGINGFACE_HUB_CACHE   where weights are downloaded (--download-dir)
#   ENABLE_PREFIX_CACHING   true|false (default: vLLM's own, which is on)
#   EXTRA_VLLM_ARGS         further `vllm serve` flags, split on whitespace
#   LLM_TRACE_EXPORTER      otlp: --otlp-traces-endpoint OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (vLLM
#                           continues the gateway's traces); none (default): no tracing
#   arguments to this script are appended last (compose `command:`), unchanged.
#
# vLLM listens on 0.0.0.0:8000 inside the container: the compose file's healthcheck
# and the gateway's VLLM_BASE_URL rely on that port.
set -euo pipefail

die() {
    printf 'vllm-entrypoint: error: %s\n' "$*" >&2
    exit 64
}

trim() {
    local value="$1"
    value="${value#"${value%%[![:space:]]*}"}"
    value="${value%"${value##*[![:space:]]}"}"
    printf '%s' "$value"
}

is_positive_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

model="$(trim "${MODEL_NAME:-}")"
if [[ -z "$model" ]]; then
    die "MODEL_NAME is not set. Set it to the Hugging Face model id (or local path) vLLM must serve, e.g. MODEL_NAME=Qwen/Qwen2.5-7B-Instruct-AWQ (in docker-compose.vllm.yml: CHAT_MODEL or INGEST_MODEL)."
fi

gpu_mem="$(trim "${GPU_MEMORY_UTILIZATION:-0.9}")"
if ! [[ "$gpu_mem" =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]]; then
    die "GPU_MEMORY_UTILIZATION must be a fraction in (0, 1], such as 0.9; got '${GPU_MEMORY_UTILIZATION}'."
fi
max_len="$(trim "${MAX_MODEL_LEN:-4096}")"
is_positive_int "$max_len" || die "MAX_MODEL_LEN must be a positive integer (tokens), such as 4096; got '${MAX_MODEL_LEN}'."
tp="$(trim "${TENSOR_PARALLEL_SIZE:-1}")"
is_positive_int "$tp" || die "TENSOR_PARALLEL_SIZE must be a positive integer (number of GPUs); got '${TENSOR_PARALLEL_SIZE}'."

args=(serve "$model" --host 0.0.0.0 --port 8000)

served="$(trim "${SERVED_MODEL_NAME:-}")"
if [[ -n "$served" ]]; then
    args+=(--served-model-name "$served")
fi

args+=(--gpu-memory-utilization "$gpu_mem" --max-model-len "$max_len" --tensor-parallel-size "$tp")

seqs="$(trim "${MAX_NUM_SEQS:-}")"
if [[ -n "$seqs" ]]; then
    is_positive_int "$seqs" || die "MAX_NUM_SEQS must be a positive integer; got '${MAX_NUM_SEQS}'."
    args+=(--max-num-seqs "$seqs")
fi

cache="$(trim "${HUGGINGFACE_HUB_CACHE:-}")"
if [[ -n "$cache" ]]; then
    args+=(--download-dir "$cache")
fi

prefix="$(trim "${ENABLE_PREFIX_CACHING:-}")"
case "${prefix,,}" in
    "") ;;
    1 | true | yes | on) args+=(--enable-prefix-caching) ;;
    0 | false | no | off) args+=(--no-enable-prefix-caching) ;;
    *) die "ENABLE_PREFIX_CACHING must be true or false; got '${ENABLE_PREFIX_CACHING}'." ;;
esac

tracing="$(trim "${LLM_TRACE_EXPORTER:-}")"
case "${tracing,,}" in
    "" | none) ;;
    otlp)
        endpoint="$(trim "${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-}")"
        [[ -n "$endpoint" ]] || die "LLM_TRACE_EXPORTER=otlp needs OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (in docker-compose.vllm.yml: OTLP_TRACES_ENDPOINT)."
        args+=(--otlp-traces-endpoint "$endpoint")
        ;;
    *) die "LLM_TRACE_EXPORTER must be otlp or none; got '${LLM_TRACE_EXPORTER}'." ;;
esac

if [[ -n "$(trim "${EXTRA_VLLM_ARGS:-}")" ]]; then
    read -r -a extra <<<"$EXTRA_VLLM_ARGS"
    args+=("${extra[@]}")
fi

args+=("$@")

printf 'vllm-entrypoint: exec vllm' >&2
printf ' %q' "${args[@]}" >&2
printf '\n' >&2
exec vllm "${args[@]}"
