#!/usr/bin/env bash
# The image's entrypoint: `vllm serve` with kvcomp's flags taken from environment variables.
#
#   MODEL           the model to serve (or give it as the first argument)
#   KV_POLICY       --kv-policy: full, streaming, snapkv, pyramid, windowkv, windowkv-per-head, pod
#   KV_BUDGET       --kv-budget: a token count (2048) or a ratio of the prompt (0.1)
#   KV_CONFIG       --kv-config: a YAML path, or the name of a preset in $KVCOMP_HOME/configs
#   KV_<NAME>       any other --kv-<name> flag (KV_WINDOW, KV_PREFILL_CHUNK, KV_WINDOW_SCORING, ...;
#                   KV_OVERRIDES, KV_OVERRIDE_POLICIES, KV_OVERRIDE_MAX_BUDGET: what a request may change)
#   HOST, PORT      where the server listens (0.0.0.0, 8000); the health check reads PORT too
#   ENFORCE_EAGER   1 adds --enforce-eager (CUDA graphs off); unset or 0 (default) leaves vLLM's
#                   CUDA graphs on, which every policy runs with. A --enforce-eager or
#                   --no-enforce-eager among the arguments wins and is passed through once.
#
# Arguments after the model pass through to `vllm serve` unchanged; as later flags they win.
set -euo pipefail

args=(serve)
if [[ -n "${MODEL:-}" ]]; then
  args+=("$MODEL")
elif [[ $# -gt 0 && "$1" != -* ]]; then
  args+=("$1")  # the model must come first: vLLM's optional positional is not found after flags
  shift
else
  echo "kvcomp entrypoint: set MODEL or give the model as the first argument" >&2
  exit 2
fi
args+=(--host "${HOST:-0.0.0.0}" --port "${PORT:-8000}")

if [[ -n "${KV_CONFIG:-}" ]]; then
  config="$KV_CONFIG"
  if [[ "$config" != */* && "$config" != *.yaml ]]; then
    config="${KVCOMP_HOME:-/opt/kvcomp}/configs/$config.yaml"  # a preset by name
  fi
  args+=(--kv-config "$config")
fi
for var in $(compgen -v KV_); do  # every other KV_<NAME> is the flag --kv-<name>
  if [[ "$var" != KV_CONFIG && -n "${!var:-}" ]]; then
    flag="--kv-${var#KV_}"
    flag="${flag,,}"
    args+=("${flag//_/-}" "${!var}")
  fi
done

if [[ "${ENFORCE_EAGER:-0}" == 1 ]]; then
  eager=1
  for arg in "$@"; do
    if [[ "$arg" == --enforce-eager || "$arg" == --no-enforce-eager ]]; then
      eager=0  # the caller decided; their flag passes through as it is
    fi
  done
  if [[ $eager == 1 ]]; then
    args+=(--enforce-eager)
  fi
fi

exec vllm "${args[@]}" "$@"
