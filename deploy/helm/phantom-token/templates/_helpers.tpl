{{/* The release's base name, at most 63 characters. */}}
{{- define "phantom-token.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "phantom-token.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "phantom-token.labels" -}}
{{ include "phantom-token.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "phantom-token.secretName" -}}
{{- .Values.secret.existingSecret | default (include "phantom-token.fullname" .) -}}
{{- end -}}

{{/* Is a Redis in use: the chart's own, or an external URL? */}}
{{- define "phantom-token.redis" -}}
{{- if or .Values.redis.enabled .Values.redis.url -}}true{{- end -}}
{{- end -}}

{{- define "phantom-token.redisName" -}}
{{- printf "%s-redis" (include "phantom-token.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The configuration file: the services from the values, phantom_token with what the chart owns set last. */}}
{{- define "phantom-token.config" -}}
{{- $pt := deepCopy .Values.phantomToken -}}
{{- $_ := set $pt "listen" (printf "0.0.0.0:%v" .Values.ports.http) -}}
{{- $_ := set $pt "admin_listen" (printf "0.0.0.0:%v" .Values.ports.admin) -}}
{{- if gt (int .Values.workers) 1 -}}
{{- $_ := set $pt "workers" (int .Values.workers) -}}
{{- end -}}
{{- if include "phantom-token.redis" . -}}
{{- $cache := deepCopy (default dict $pt.cache) -}}
{{- $_ := set $cache "redis_url" "{vault://env/PHANTOM_REDIS_URL}" -}}
{{- $_ := set $cache "encryption_key" "{vault://env/PHANTOM_CACHE_KEY}" -}}
{{- $_ := set $pt "cache" $cache -}}
{{- end -}}
{{- dict "_format_version" "2.1" "services" .Values.services "phantom_token" $pt | toYaml -}}
{{- end -}}

{{- define "phantom-token.redisLabels" -}}
app.kubernetes.io/name: {{ include "phantom-token.redisName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
