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
