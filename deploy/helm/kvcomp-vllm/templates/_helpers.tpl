{{/* Names and labels shared by every manifest. */}}

{{/* The release's object name: the release name, with the chart's name unless it already holds it. */}}
{{- define "kvcomp-vllm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kvcomp-vllm.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kvcomp-vllm.labels" -}}
{{ include "kvcomp-vllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kvcomp-vllm.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The preset file, served from the release's ConfigMap, that --kv-config points at. */}}
{{- define "kvcomp-vllm.presetPath" -}}
{{- printf "/etc/kvcomp/%s.yaml" .Values.kvPreset -}}
{{- end -}}

{{/* GPUs per pod: gpu.count, or one per worker (tensorParallelSize x dataParallelSize) where it is unset. */}}
{{- define "kvcomp-vllm.gpus" -}}
{{- if kindIs "invalid" .Values.gpu.count -}}
{{- mul (int64 .Values.tensorParallelSize) (int64 (.Values.dataParallelSize | default 1)) -}}
{{- else -}}
{{- int64 .Values.gpu.count -}}
{{- end -}}
{{- end -}}
