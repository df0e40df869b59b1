{{/*
Chart name, possibly overridden.
*/}}
{{- define "kefu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource: <release>-<chart>, or the release name when it
already contains the chart name. Capped at 49 characters so that "-orchestrator"
still fits in a 63-character name.
*/}}
{{- define "kefu.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 49 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 49 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 49 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kefu.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of a per-service object. Context: dict "root" $ "name" <service>.
*/}}
{{- define "kefu.componentName" -}}
{{- printf "%s-%s" (include "kefu.fullname" .root) .name }}
{{- end }}

{{/*
Selector labels. Context: dict "root" $ "component" <component>.
*/}}
{{- define "kefu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kefu.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Standard labels. Context: dict "root" $ "component" <component>.
*/}}
{{- define "kefu.labels" -}}
helm.sh/chart: {{ include "kefu.chart" .root }}
{{ include "kefu.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | replace "+" "_" | replace "@" "_" | replace ":" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: kefu
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/*
Labels shared by all pods of the release (used by the ServiceMonitor selector).
*/}}
{{- define "kefu.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kefu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: kefu
{{- end }}

{{- define "kefu.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kefu.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image of a service. Context: dict "root" $ "name" <service>.
*/}}
{{- define "kefu.image" -}}
{{- $img := .root.Values.image }}
{{- $ref := printf "%s%s:%s" $img.repositoryPrefix .name ($img.tag | default .root.Chart.AppVersion) }}
{{- if $img.registry }}
{{- printf "%s/%s" (trimSuffix "/" $img.registry) $ref }}
{{- else }}
{{- $ref }}
{{- end }}
{{- end }}

{{/*
gRPC URL of a service inside the namespace. Context: dict "root" $ "name" <service>.
*/}}
{{- define "kefu.serviceUrl" -}}
{{- $svc := index .root.Values.services .name }}
{{- printf "http://%s:%d" (include "kefu.componentName" .) (int $svc.grpcPort) }}
{{- end }}

{{/*
The Secret holding DATABASE_URL, REDIS_URL and extra credentials.
*/}}
{{- define "kefu.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "kefu.fullname" .)) }}
{{- end }}

{{/*
Whether the chart renders its own Secret: only when it would hold something.
*/}}
{{- define "kefu.createSecret" -}}
{{- $s := .Values.secrets }}
{{- if and (not $s.existingSecret) (or $s.databaseUrl $s.redisUrl $s.extraEnv) }}true{{ end }}
{{- end }}

{{/*
Key of DATABASE_URL / REDIS_URL in the Secret, or empty when the setting is not
provided. Context: dict "root" $ "setting" "database"|"redis".
*/}}
{{- define "kefu.secretKey" -}}
{{- $s := .root.Values.secrets }}
{{- if eq .setting "database" }}
{{- if $s.existingSecret }}{{ $s.databaseUrlKey }}{{ else if $s.databaseUrl }}DATABASE_URL{{ end }}
{{- else }}
{{- if $s.existingSecret }}{{ $s.redisUrlKey }}{{ else if $s.redisUrl }}REDIS_URL{{ end }}
{{- end }}
{{- end }}

{{/*
The non-secret environment of one service, as ConfigMap data.
Context: dict "root" $ "name" <service> "svc" <service values>.
*/}}
{{- define "kefu.configData" -}}
{{- $root := .root }}
{{- $svc := .svc }}
KEFU_BIND_HOST: "0.0.0.0"
KEFU_GRPC_PORT: {{ $svc.grpcPort | quote }}
KEFU_METRICS_PORT: {{ $svc.metricsPort | quote }}
KEFU_LOG_FORMAT: {{ $root.Values.config.logFormat | quote }}
RUST_LOG: {{ $root.Values.config.rustLog | quote }}
KEFU_MAX_MESSAGE_BYTES: {{ $root.Values.config.maxMessageBytes | quote }}
KEFU_REQUEST_TIMEOUT_MS: {{ $root.Values.config.requestTimeoutMs | quote }}
KEFU_DATA_DIR: /app/data
{{- if $svc.needs.tenants }}
KEFU_TENANTS_DIR: /app/tenants
{{- end }}
{{- if $svc.needs.models }}
KEFU_MODELS_DIR: /app/models
{{- end }}
{{- with $root.Values.tracing.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- range $callee := $svc.calls }}
KEFU_{{ upper $callee }}_URL: {{ include "kefu.serviceUrl" (dict "root" $root "name" $callee) | quote }}
{{- end }}
{{- range $k, $v := $root.Values.config.extraEnv }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- range $k, $v := $svc.env }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/*
Services that call the given one (its allowed gRPC clients).
Context: dict "root" $ "name" <service>. Output: space-separated names.
*/}}
{{- define "kefu.callers" -}}
{{- $callers := list }}
{{- range $caller, $svc := .root.Values.services }}
{{- if and $svc.enabled (has $.name $svc.calls) }}
{{- $callers = append $callers $caller }}
{{- end }}
{{- end }}
{{- join " " $callers }}
{{- end }}
