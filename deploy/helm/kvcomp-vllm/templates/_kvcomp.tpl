{{/*
The kvcomp settings as vLLM will see them, and the `vllm serve` flags that carry them.
Settings start from the preset's fields; kvPolicy, kvBudget and kvParams go on top, as the flags
do on top of --kv-config in `vllm serve`. Keys are KVPolicyConfig field names. The budget is kept
as text ("2048" tokens, "0.1" a ratio): YAML numbers reach templates as floats, so a whole number
is read as a token count. `kernel`, the deprecated name of `pool_size` (kvParams.kernel, a preset's
`kernel:`), is read as pool_size and passed on as --kv-kernel, so the server logs the deprecation;
`given` maps such a field to the name it was given by, for error messages. Returns JSON
{"settings": {...}, "flags": [...], "given": {...}}.
*/}}
{{- define "kvcomp-vllm.kv" -}}
{{- $v := .Values -}}
{{- $settings := dict -}}
{{- $flags := list -}}
{{- $given := dict -}}
{{- with $v.kvPreset -}}
  {{- $text := $.Files.Get (printf "presets/%s.yaml" .) -}}
  {{- if not $text -}}
    {{- $names := list -}}
    {{- range $path, $_ := $.Files.Glob "presets/*.yaml" -}}
      {{- $names = append $names (base $path | trimSuffix ".yaml") -}}
    {{- end -}}
    {{- fail (printf "kvPreset: no preset %q (presets: %s)" . (join ", " $names)) -}}
  {{- end -}}
  {{- $settings = fromYaml $text -}}
  {{- if hasKey $settings "kernel" -}}
    {{- if not (hasKey $settings "pool_size") -}}
      {{- $_ := set $settings "pool_size" $settings.kernel -}}
      {{- $_ := set $given "pool_size" "kernel" -}}
    {{- else if ne (toString $settings.pool_size) (toString $settings.kernel) -}}
      {{- include "kvcomp-vllm.kvFail" (printf "kernel, pool_size: both given, with different values (%v and %v); kernel is the deprecated name of pool_size: give pool_size alone (preset %s)" $settings.kernel $settings.pool_size .) -}}
    {{- end -}}
    {{- $_ := unset $settings "kernel" -}}
  {{- end -}}
  {{- with regexFind "(?m)^budget:[ \t]*[^ \t#\r\n]+" $text -}}
    {{- $_ := set $settings "budget" (regexReplaceAll "^budget:[ \t]*" . "") -}}
  {{- end -}}
  {{- $flags = list "--kv-config" (include "kvcomp-vllm.presetPath" $) -}}
{{- end -}}
{{- with $v.kvPolicy -}}
  {{- $_ := set $settings "policy" . -}}
  {{- $flags = concat $flags (list "--kv-policy" .) -}}
{{- end -}}
{{- $b := $v.kvBudget -}}
{{- if and (not (kindIs "invalid" $b)) (ne (toString $b) "") -}}
  {{- $text := toString $b -}}
  {{- if and (not (kindIs "string" $b)) (eq (floor $b) (float64 $b)) -}}
    {{- $text = printf "%d" (int64 $b) -}}
  {{- end -}}
  {{- $_ := set $settings "budget" $text -}}
  {{- $flags = concat $flags (list "--kv-budget" $text) -}}
{{- end -}}
{{- $params := $v.kvParams | default dict -}}
{{- range $key := list "window" "poolSize" "kernel" "pooling" "beta" "tiers" "sink" "recent" "groupSize" "windowSize" "windowScoring" "concentrationThreshold" "prefillChunk" "cachePrefix" -}}
  {{- if and (hasKey $params $key) (not (kindIs "invalid" (get $params $key))) -}}
    {{- $x := get $params $key -}}
    {{- if ne $key "kernel" -}}
      {{- $_ := set $settings (snakecase $key) $x -}}
      {{- $_ := unset $given (snakecase $key) -}}  {{/* given by its own name, over a preset's kernel */}}
    {{- else if or (not (hasKey $params "poolSize")) (kindIs "invalid" $params.poolSize) -}}
      {{- $_ := set $settings "pool_size" $x -}}
      {{- $_ := set $given "pool_size" "kernel" -}}
    {{- else if ne (toString $params.poolSize) (toString $x) -}}
      {{- include "kvcomp-vllm.kvFail" (printf "kernel, pool_size: both given, with different values (%v and %v); kernel is the deprecated name of pool_size: give pool_size alone (values: kvParams.kernel, kvParams.poolSize)" $x $params.poolSize) -}}
    {{- end -}}
    {{- $text := toString $x -}}
    {{- if and (kindIs "float64" $x) (eq (floor $x) $x) -}}
      {{- $text = printf "%d" (int64 $x) -}}
    {{- end -}}
    {{- $flags = concat $flags (list (printf "--kv-%s" (kebabcase $key)) $text) -}}
  {{- end -}}
{{- end -}}
{{- with $v.kvOverrides -}}
  {{- with .allow -}}{{- $flags = concat $flags (list "--kv-overrides" .) -}}{{- end -}}
  {{- with .policies -}}{{- $flags = concat $flags (list "--kv-override-policies" (join "," .)) -}}{{- end -}}
  {{- $m := .maxBudget -}}
  {{- if and (not (kindIs "invalid" $m)) (ne (toString $m) "") -}}
    {{- $text := toString $m -}}
    {{- if and (not (kindIs "string" $m)) (eq (floor $m) (float64 $m)) -}}
      {{- $text = printf "%d" (int64 $m) -}}
    {{- end -}}
    {{- $flags = concat $flags (list "--kv-override-max-budget" $text) -}}
  {{- end -}}
{{- end -}}
{{- dict "settings" $settings "flags" $flags "given" $given | toJson -}}
{{- end -}}
