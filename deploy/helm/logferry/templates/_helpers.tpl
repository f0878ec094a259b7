{{/* Names and labels, as fluent/helm-charts' fluent-bit chart makes them. */}}
{{- define "logferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "logferry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "logferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "logferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "logferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "logferry.labels" -}}
helm.sh/chart: {{ include "logferry.chart" . }}
{{ include "logferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "logferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "logferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "logferry.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}:{{ $tag }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end }}
{{- end }}

{{/* The main config file, rendered from `config.*` (values may hold templates). */}}
{{- define "logferry.mainConfig" -}}
{{ tpl .Values.config.service . }}
{{ tpl .Values.config.inputs . }}
{{ tpl .Values.config.filters . }}
{{ tpl .Values.config.outputs . }}
{{- end }}

{{/*
The ConfigMap's content, for `checksum/config`: the chart's own, or the data of an
`existingConfigMap` read from the cluster at install/upgrade time. An offline render cannot see
an existing ConfigMap: then there is no checksum (never a constant that looks like one).
*/}}
{{- define "logferry.configContent" -}}
{{- if .Values.existingConfigMap }}
{{- $existing := lookup "v1" "ConfigMap" .Release.Namespace .Values.existingConfigMap }}
{{- if $existing }}{{ toJson $existing.data }}{{ end }}
{{- else }}
{{- include "logferry.mainConfig" . }}
{{- tpl .Values.config.customParsers . }}
{{- toJson .Values.config.extraFiles }}
{{- end }}
{{- end }}

{{/* True when any part of the config uses the `kubernetes` filter (it needs the ClusterRole). */}}
{{- define "logferry.usesKubernetesFilter" -}}
{{- if regexMatch "(?im)^\\s*name\\s+kubernetes\\s*$" (include "logferry.mainConfig" .) }}true{{ end }}
{{- end }}

{{/* `[SERVICE] Grace` from the config (Fluent Bit's default 5 s), plus a margin. */}}
{{- define "logferry.terminationGracePeriod" -}}
{{- if .Values.terminationGracePeriodSeconds }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- $grace := regexFind "(?im)^\\s*grace\\s+[0-9]+" (include "logferry.mainConfig" .) | regexFind "[0-9]+$" | default "5" | int }}
{{- add $grace 25 }}
{{- end }}
{{- end }}
