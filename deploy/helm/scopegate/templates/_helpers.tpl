{{/* Names and labels. */}}
{{- define "scopegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "scopegate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "scopegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels; the component label is added per resource. */}}
{{- define "scopegate.labels" -}}
helm.sh/chart: {{ include "scopegate.chart" . }}
app.kubernetes.io/name: {{ include "scopegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The gateway pods. */}}
{{- define "scopegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scopegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* The Secret the scopegate container's secret env vars come from. */}}
{{- define "scopegate.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "scopegate.fullname" .) -}}
{{- end -}}

{{/* Whether the chart renders its own Secret. */}}
{{- define "scopegate.createSecret" -}}
{{- if or (not .Values.secrets.existingSecret) .Values.postgresql.enabled -}}true{{- end -}}
{{- end -}}

{{/* Where SCOPEGATE_DATABASE_URL comes from: "secretName key". */}}
{{- define "scopegate.databaseUrlRef" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "scopegate.fullname" . }} SCOPEGATE_DATABASE_URL
{{- else if .Values.externalDatabase.existingSecret -}}
{{- .Values.externalDatabase.existingSecret }} {{ .Values.externalDatabase.existingSecretKey }}
{{- else -}}
{{- include "scopegate.secretName" . }} SCOPEGATE_DATABASE_URL
{{- end -}}
{{- end -}}

{{- define "scopegate.postgresqlName" -}}
{{- printf "%s-postgresql" (include "scopegate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The dev PostgreSQL's URL (postgresql.enabled). */}}
{{- define "scopegate.postgresqlUrl" -}}
{{- $auth := .Values.postgresql.auth -}}
{{- $password := required "postgresql.auth.password is required when postgresql.enabled" $auth.password -}}
{{- printf "postgres://%s:%s@%s:5432/%s" (urlquery $auth.username) (urlquery $password) (include "scopegate.postgresqlName" .) $auth.database -}}
{{- end -}}

{{/*
gateway.yaml: .Values.config verbatim (Scopegate substitutes ${VAR} in the text, so it
is not re-serialised), after checking that it parses and listens on .Values.ports.
*/}}
{{- define "scopegate.config" -}}
{{- $text := required "config (the gateway.yaml text) is required" .Values.config -}}
{{- if not (kindIs "string" $text) -}}
{{- fail "config must be the gateway.yaml text (config: |, or --set-file config=FILE)" -}}
{{- end -}}
{{- $parsed := fromYaml $text -}}
{{- if hasKey $parsed "Error" -}}
{{- fail (printf "config is not valid YAML: %s" $parsed.Error) -}}
{{- end -}}
{{- $server := get $parsed "server" | default dict -}}
{{- range $key, $port := dict "listen" .Values.ports.http "admin_listen" .Values.ports.admin -}}
{{- $want := printf "0.0.0.0:%d" (int $port) -}}
{{- $got := get $server $key | default "" | toString -}}
{{- if not (or (eq $got $want) (eq $got (printf "[::]:%d" (int $port)))) -}}
{{- fail (printf "config: server.%s is %q, but the chart's ports need %s" $key $got $want) -}}
{{- end -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{- define "scopegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
