{{/*
Fail at template time on values that vLLM with kvcomp would refuse at start-up, with the same words.
The kvcomp rules mirror KVPolicyConfig (kvcomp_vllm/config.py); tests/test_deploy_helm.py runs a
table of settings through both and checks that they accept and reject alike. Types and shapes are
left to values.schema.json.
*/}}
{{- define "kvcomp-vllm.validate" -}}
{{- include "kvcomp-vllm.validateKv" . -}}
{{- include "kvcomp-vllm.validateServer" . -}}
{{- end -}}

{{- define "kvcomp-vllm.kvFail" -}}
{{- fail (printf "invalid kvcomp settings: %s" .) -}}
{{- end -}}

{{/* A whole number (all numbers are float64 after the JSON round trip) no less than `min`. */}}
{{- define "kvcomp-vllm.intAtLeast" -}}
{{- $x := index . 0 -}}
{{- if and (kindIs "float64" $x) (eq (floor $x) $x) (ge $x (float64 (index . 1))) }}yes{{ end -}}
{{- end -}}

{{- define "kvcomp-vllm.validateKv" -}}
{{- $kv := include "kvcomp-vllm.kv" . | fromJson -}}
{{- $s := $kv.settings -}}
{{- $given := $kv.given -}}
{{- if $s -}}
{{- $fields := dict
    "full" (list)
    "streaming" (list "budget" "cache_prefix" "prefill_chunk" "sink")
    "snapkv" (list "budget" "cache_prefix" "pool_size" "pooling" "prefill_chunk" "window")
    "pyramid" (list "beta" "budget" "cache_prefix" "pool_size" "pooling" "prefill_chunk" "tiers" "window")
    "windowkv" (list "budget" "cache_prefix" "concentration_threshold" "group_size" "prefill_chunk" "window" "window_scoring" "window_size")
    "windowkv-per-head" (list "budget" "cache_prefix" "concentration_threshold" "group_size" "prefill_chunk" "window" "window_size" "window_sizes")
    "pod" (list "cache_prefix" "group_size" "recent" "sink") -}}
{{- $policy := $s.policy | default "full" -}}
{{- if not (hasKey $fields $policy) -}}
  {{- include "kvcomp-vllm.kvFail" (printf "policy: must be one of full, streaming, snapkv, pyramid, windowkv, windowkv-per-head, pod, got %q (values: kvPolicy)" $policy) -}}
{{- end -}}
{{- $allowed := get $fields $policy -}}
{{- $extra := list -}}
{{- range $k, $_ := $s -}}
  {{- if and (ne $k "policy") (not (has $k $allowed)) }}{{ $extra = append $extra (get $given $k | default $k) }}{{ end -}}
{{- end -}}
{{- if $extra -}}
  {{- $hint := "" -}}
  {{- if $.Values.kvPreset -}}
    {{- $hint = printf "; kvPolicy, kvBudget and kvParams override preset %s (kvPolicy: \"\" and kvBudget: null take it as it is)" $.Values.kvPreset -}}
  {{- end -}}
  {{- include "kvcomp-vllm.kvFail" (printf "%s: not a parameter of policy '%s' (its parameters: %s)%s" (sortAlpha $extra | join ", ") $policy (join ", " $allowed | default "none") $hint) -}}
{{- end -}}
{{- range $k, $min := dict "window" 1 "pool_size" 1 "tiers" 1 "sink" 0 "recent" 1 "group_size" 1 "prefill_chunk" 1 -}}
  {{- if and (hasKey $s $k) (not (include "kvcomp-vllm.intAtLeast" (list (get $s $k) $min))) -}}
    {{- $name := get $given $k | default $k -}}
    {{- include "kvcomp-vllm.kvFail" (printf "%s: must be an integer >= %d, got %v (values: kvParams.%s)" $name $min (get $s $k) (camelcase $name | untitle)) -}}
  {{- end -}}
{{- end -}}
{{- if and (hasKey $s "pool_size") (eq (mod (int64 $s.pool_size) 2) 0) -}}
  {{- $name := get $given "pool_size" | default "pool_size" -}}
  {{- include "kvcomp-vllm.kvFail" (printf "%s: must be odd so pooling keeps positions centred, got %d (values: kvParams.%s)" $name (int64 $s.pool_size) (camelcase $name | untitle)) -}}
{{- end -}}
{{- if and (hasKey $s "pooling") (not (has $s.pooling (list "avg" "max"))) -}}
  {{- include "kvcomp-vllm.kvFail" (printf "pooling: must be avg or max, got %v (values: kvParams.pooling)" $s.pooling) -}}
{{- end -}}
{{- if and (hasKey $s "beta") (not (and (kindIs "float64" $s.beta) (ge $s.beta 1.0))) -}}
  {{- include "kvcomp-vllm.kvFail" (printf "beta: must be a number >= 1, got %v (values: kvParams.beta)" $s.beta) -}}
{{- end -}}
{{- if and (hasKey $s "window_size") (ne (toString $s.window_size) "auto") (not (include "kvcomp-vllm.intAtLeast" (list $s.window_size 1))) -}}
  {{- include "kvcomp-vllm.kvFail" (printf "window_size: must be 'auto' or an integer >= 1, got %v (values: kvParams.windowSize)" $s.window_size) -}}
{{- end -}}
{{- if and (hasKey $s "cache_prefix") (ne (toString $s.cache_prefix) "auto") -}}
  {{- if not (include "kvcomp-vllm.intAtLeast" (list $s.cache_prefix 0)) -}}
    {{- include "kvcomp-vllm.kvFail" (printf "cache_prefix: must be 'auto' or a token count in [0, 16777216], got %v (values: kvParams.cachePrefix)" $s.cache_prefix) -}}
  {{- else if gt (int64 $s.cache_prefix) 16777216 -}}
    {{- include "kvcomp-vllm.kvFail" (printf "cache_prefix: must be 'auto' or a token count in [0, 16777216], got %d (values: kvParams.cachePrefix)" (int64 $s.cache_prefix)) -}}
  {{- else if and $.Values.maxModelLen (gt (int64 $s.cache_prefix) (int64 $.Values.maxModelLen)) -}}
    {{- include "kvcomp-vllm.kvFail" (printf "cache_prefix: %d tokens is larger than the model's context (%d tokens) (values: kvParams.cachePrefix, maxModelLen)" (int64 $s.cache_prefix) (int64 $.Values.maxModelLen)) -}}
  {{- end -}}
{{- end -}}
{{- if and (eq $policy "windowkv") (hasKey $s "window_size") (eq (toString $s.window_size) "auto") -}}
  {{- include "kvcomp-vllm.kvFail" "window_size: windowkv tiles windows of one size (default 8); 'auto' sizes belong to policy 'windowkv-per-head' (values: kvParams.windowSize)" -}}
{{- end -}}
{{- if and (hasKey $s "concentration_threshold") (not (and (kindIs "float64" $s.concentration_threshold) (gt $s.concentration_threshold 0.0) (lt $s.concentration_threshold 1.0))) -}}
  {{- include "kvcomp-vllm.kvFail" (printf "concentration_threshold: must be a number in (0, 1), got %v (values: kvParams.concentrationThreshold)" $s.concentration_threshold) -}}
{{- end -}}
{{- if and (hasKey $s "window_scoring") (not (has $s.window_scoring (list "auto" "max" "average"))) -}}
  {{- include "kvcomp-vllm.kvFail" (printf "window_scoring: must be auto, max or average, got %v (values: kvParams.windowScoring)" $s.window_scoring) -}}
{{- end -}}
{{- if and (hasKey $s "prefill_chunk") (has $policy (list "snapkv" "pyramid" "windowkv" "windowkv-per-head")) -}}
  {{- $window := int64 (hasKey $s "window" | ternary $s.window 32) -}}
  {{- if lt (int64 $s.prefill_chunk) $window -}}
    {{- include "kvcomp-vllm.kvFail" (printf "prefill_chunk: %d tokens is less than window (%d); each chunk's last queries score its compression (values: kvParams.prefillChunk)" (int64 $s.prefill_chunk) $window) -}}
  {{- end -}}
{{- end -}}
{{- if and (has $policy (list "streaming" "snapkv" "pyramid" "windowkv" "windowkv-per-head")) (not (hasKey $s "budget")) -}}
  {{- include "kvcomp-vllm.kvFail" (printf "budget: policy '%s' needs a budget (token count or ratio in (0, 1]) (values: kvBudget)" $policy) -}}
{{- end -}}
{{- with $s.budget -}}
  {{- if regexMatch "^-?[0-9]+$" . -}}
    {{- $tokens := int64 . -}}
    {{- $floor := int64 (hasKey $s "window" | ternary $s.window 32) -}}
    {{- $floorName := "window" -}}
    {{- if eq $policy "streaming" -}}
      {{- $floor = add1 (int64 (hasKey $s "sink" | ternary $s.sink 4)) -}}
      {{- $floorName = "sink + 1" -}}
    {{- end -}}
    {{- if lt $tokens $floor -}}
      {{- include "kvcomp-vllm.kvFail" (printf "budget: %d tokens is less than %s (%d) for policy '%s' (values: kvBudget)" $tokens $floorName $floor $policy) -}}
    {{- end -}}
    {{- if and $.Values.maxModelLen (gt $tokens (int64 $.Values.maxModelLen)) -}}
      {{- include "kvcomp-vllm.kvFail" (printf "budget: %d tokens is larger than the model's context (%d tokens) (values: kvBudget, maxModelLen)" $tokens (int64 $.Values.maxModelLen)) -}}
    {{- end -}}
  {{- else if not (regexMatch "^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$" .) -}}
    {{- include "kvcomp-vllm.kvFail" (printf "budget: must be a token count or a ratio in (0, 1], got %q (values: kvBudget)" .) -}}
  {{- else -}}
    {{- $ratio := float64 . -}}
    {{- if not (and (gt $ratio 0.0) (le $ratio 1.0)) -}}
      {{- include "kvcomp-vllm.kvFail" (printf "budget: a ratio must lie in (0, 1], got %s; give an integer for a token count (values: kvBudget)" .) -}}
    {{- end -}}
  {{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Server settings that vLLM or the plugin would refuse, and secrets given in the clear. */}}
{{- define "kvcomp-vllm.validateServer" -}}
{{- $v := .Values -}}
{{- if not $v.model -}}
  {{- fail "model: set the model to serve (a Hugging Face id or a path inside the container)" -}}
{{- end -}}
{{- $tp := $v.tensorParallelSize -}}
{{- if not (include "kvcomp-vllm.intAtLeast" (list (float64 $tp) 1)) -}}
  {{- fail (printf "tensorParallelSize: must be an integer >= 1, got %v" $tp) -}}
{{- end -}}
{{- $dp := ternary 1 $v.dataParallelSize (kindIs "invalid" $v.dataParallelSize) -}}
{{- if not (include "kvcomp-vllm.intAtLeast" (list (float64 $dp) 1)) -}}
  {{- fail (printf "dataParallelSize: must be an integer >= 1, got %v" $dp) -}}
{{- end -}}
{{- $gpus := include "kvcomp-vllm.gpus" . | int64 -}}
{{- $workers := mul (int64 $tp) (int64 $dp) -}}
{{- if gt $workers (max $gpus 1) -}}
  {{- $what := ternary "tensorParallelSize" "tensorParallelSize x dataParallelSize" (eq (int64 $dp) 1) -}}
  {{- fail (printf "%s: %d workers need %d GPUs per pod, but gpu.count is %d" $what $workers $workers $gpus) -}}
{{- end -}}
{{- range $v.extraArgs -}}
  {{- if has (regexReplaceAll "=.*$" . "") (list "--pipeline-parallel-size" "-pp") -}}
    {{- fail (printf "extraArgs: %s: kvcomp refuses pipeline parallelism (compaction across pipeline stages is untested); use tensorParallelSize" .) -}}
  {{- end -}}
{{- end -}}
{{- $owned := dict "--port" "containerPort" "--host" "the image (0.0.0.0)" "--api-key" "apiKey.existingSecret"
    "--kv-config" "kvPreset" "--tensor-parallel-size" "tensorParallelSize" "-tp" "tensorParallelSize"
    "--data-parallel-size" "dataParallelSize" "-dp" "dataParallelSize"
    "--enforce-eager" "enforceEager" "--no-enforce-eager" "enforceEager" "--max-model-len" "maxModelLen"
    "--served-model-name" "servedModelName" -}}
{{- range $v.extraArgs -}}
  {{- $flag := regexReplaceAll "=.*$" . "" -}}
  {{- if hasKey $owned $flag -}}
    {{- fail (printf "extraArgs: %s is set by the chart: use %s" $flag (get $owned $flag)) -}}
  {{- else if hasPrefix "--kv-" $flag -}}
    {{- fail (printf "extraArgs: %s is set by the chart, which checks it: use kvPolicy, kvBudget or kvParams" $flag) -}}
  {{- end -}}
{{- end -}}
{{- range $v.extraEnv -}}
  {{- if and (has .name (list "VLLM_API_KEY" "HF_TOKEN")) (hasKey . "value") -}}
    {{- fail (printf "extraEnv: %s must come from a Secret, not a value: use apiKey.existingSecret / hfToken.existingSecret" .name) -}}
  {{- end -}}
{{- end -}}
{{- range $name := list "apiKey" "hfToken" -}}
  {{- $ref := get $v $name | default dict -}}
  {{- if and $ref.existingSecret (not $ref.key) -}}
    {{- fail (printf "%s.key: name the key of Secret %q that holds the value" $name $ref.existingSecret) -}}
  {{- end -}}
{{- end -}}
{{- end -}}
