{{/*
The kvcomp settings as vLLM will see them, and the `vllm serve` flags that carry them.
Settings start from the preset's fields; kvPolicy, kvBudget and kvParams go on top, as the flags
do on top of --kv-config in `vllm serve`. Keys are KVPolicyConfig field names. The budget is kept
as text ("2048" tokens, "0.1" a ratio): YAML numbers reach templates as floats, so a whole number
is read as a token count. Returns JSON {"settings": {...}, "flags": [...]}.
*/}}
{{- define "kvcomp-vllm.kv" -}}
{{- $v := .Values -}}
{{- $settings := dict -}}
{{- $flags := list -}}
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
{{- range $key := list "window" "kernel" "pooling" "beta" "tiers" "sink" "recent" "groupSize" "windowSize" "windowScoring" "concentrationThreshold" "prefillChunk" -}}
  {{- $params := $v.kvParams | default dict -}}
  {{- if and (hasKey $params $key) (not (kindIs "invalid" (get $params $key))) -}}
    {{- $x := get $params $key -}}
    {{- $_ := set $settings (snakecase $key) $x -}}
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
{{- dict "settings" $settings "flags" $flags | toJson -}}
{{- end -}}
