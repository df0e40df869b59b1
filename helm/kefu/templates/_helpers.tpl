{{/*
Chart name, possibly overridden.
*/}}
{{- define "kefu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource: <release>-<chart>, or the release name when it
already contains the chart name. Capped at 49 characters so that "-orchestrator"
still fits in a 63-character name; the headless Services' names need at most 41
(kefu.headlessName refuses longer ones).
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
Name of a service's headless Service, which the other services call: its DNS name
answers with the address of every ready pod, so that the clients, which resolve it
again every KEFU_DNS_REFRESH_MS, spread their calls over all replicas (a ClusterIP would
carry one caller's calls to one pod over one HTTP/2 connection). A Service name must be
a DNS label: refused rather than truncated, as a cut name would no longer be the regular
name plus "-headless". Context: dict "root" $ "name" <service>.
*/}}
{{- define "kefu.headlessName" -}}
{{- $name := printf "%s-headless" (include "kefu.componentName" .) }}
{{- if gt (len $name) 63 }}
{{- fail (printf "the Service name %s is longer than 63 characters: set fullnameOverride (or a shorter release name) so that the full name has at most %d characters" $name (sub 63 (sub (len $name) (len (include "kefu.fullname" .root))))) }}
{{- end }}
{{- $name }}
{{- end }}

{{/*
gRPC URL of a service inside the namespace, as its callers dial it: the headless
Service (kefu.headlessName), same port, https under tls.internal.
Context: dict "root" $ "name" <service>.
*/}}
{{- define "kefu.serviceUrl" -}}
{{- $svc := index .root.Values.services .name }}
{{- $scheme := ternary "https" "http" (.root.Values.tls.internal.enabled | default false) }}
{{- printf "%s://%s:%d" $scheme (include "kefu.headlessName" .) (int $svc.grpcPort) }}
{{- end }}

{{/*
TLS. Every pod that has a certificate mounts one Secret at kefu.tlsDir (tls.crt,
tls.key and, for internal TLS, ca.crt):
- with tls.internal, every service its internal Secret: servers require client
  certificates signed by ca.crt (not the gateway, whose port is public), callers verify
  against ca.crt and present their own certificate;
- else the gateway, with tls.gateway, its public Secret.
*/}}
{{- define "kefu.tlsDir" -}}/etc/kefu/tls{{- end }}

{{/*
The certificate the channel service's SMTP listener offers STARTTLS with (a
kubernetes.io/tls Secret), for the channel service only; empty otherwise.
*/}}
{{- define "kefu.smtpTlsSecret" -}}
{{- $smtp := .root.Values.channels.smtp }}
{{- if and (eq .name "channels") $smtp.enabled $smtp.tls.existingSecret }}{{ $smtp.tls.existingSecret }}{{ end }}
{{- end }}
{{- define "kefu.smtpTlsDir" -}}/etc/kefu/smtp-tls{{- end }}

{{/*
Refuses TLS settings that cannot work, at render time.
*/}}
{{- define "kefu.tls.check" -}}
{{- $tls := .Values.tls }}
{{- if and $tls.gateway.enabled $tls.internal.enabled }}
{{- fail "tls.gateway and tls.internal cannot both be enabled: the gateway has one certificate (KEFU_TLS_CERT) for its public port and as its client identity towards the other services, so with tls.internal it serves its internal certificate; terminate public TLS at the ingress (ingress.tls) and leave tls.gateway off" }}
{{- end }}
{{- if and $tls.gateway.enabled (not $tls.gateway.existingSecret) }}
{{- fail "tls.gateway.enabled needs tls.gateway.existingSecret (a kubernetes.io/tls Secret with tls.crt and tls.key)" }}
{{- end }}
{{- /* The channel service calls the gateway by its headless Service name, over plaintext
  or with the internal CA: a public certificate names neither. */}}
{{- if and $tls.gateway.enabled .Values.services.channels.enabled }}
{{- fail "tls.gateway cannot be enabled with the channel service (services.channels.enabled): it calls the gateway inside the cluster by its headless Service name, which a public certificate does not carry, and verifies only certificates of the internal CA; terminate public TLS at the ingress (ingress.tls, and tls.internal for TLS inside the cluster), or set services.channels.enabled=false" }}
{{- end }}
{{- if and $tls.internal.enabled $tls.internal.certManager.enabled }}
{{- if $tls.internal.existingSecret }}
{{- fail "tls.internal.certManager creates one Secret per service: leave tls.internal.existingSecret empty" }}
{{- end }}
{{- if not $tls.internal.certManager.issuerRef.name }}
{{- fail "tls.internal.certManager.enabled needs tls.internal.certManager.issuerRef.name (a cert-manager CA issuer)" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Secret of the per-service internal certificate. Context: dict "root" $ "name" <service>.
*/}}
{{- define "kefu.tls.internalSecret" -}}
{{- .root.Values.tls.internal.existingSecret | default (printf "%s-mtls" (include "kefu.componentName" .)) }}
{{- end }}

{{/*
The Secret a service mounts at kefu.tlsDir, or empty for plaintext.
Context: dict "root" $ "name" <service>.
*/}}
{{- define "kefu.tls.secret" -}}
{{- $tls := .root.Values.tls }}
{{- if $tls.internal.enabled }}
{{- include "kefu.tls.internalSecret" . }}
{{- else if and (eq .name "gateway") $tls.gateway.enabled }}
{{- $tls.gateway.existingSecret }}
{{- end }}
{{- end }}

{{/*
Whether a service requires client certificates (mutual TLS): every internal service
under tls.internal; never the gateway. Context: dict "root" $ "name" <service>.
*/}}
{{- define "kefu.tls.mutual" -}}
{{- if and .root.Values.tls.internal.enabled (ne .name "gateway") }}true{{ end }}
{{- end }}

{{/*
One probe's action: the kubelet's gRPC probe on a plaintext port. The kubelet's gRPC
probe cannot speak TLS, so on a TLS port the image's grpc_health_probe (deploy/Dockerfile)
checks the same health name over TLS, presenting the pod's own certificate where the
server requires one. It dials its own pod over loopback, so it checks the handshake and
the health status, not the server's name. Context: dict "root" $ "name" <service>
"svc" <service values> "health" <health name>.
*/}}
{{- define "kefu.probeAction" -}}
{{- if include "kefu.tls.secret" . }}
exec:
  command:
    - /usr/local/bin/grpc_health_probe
    - -addr=127.0.0.1:{{ .svc.grpcPort }}
    - -service={{ .health }}
    - -connect-timeout=1s
    - -rpc-timeout=1s
    - -tls
    - -tls-no-verify
    {{- if include "kefu.tls.mutual" . }}
    - -tls-client-cert={{ include "kefu.tlsDir" . }}/tls.crt
    - -tls-client-key={{ include "kefu.tlsDir" . }}/tls.key
    {{- end }}
{{- else }}
grpc:
  port: {{ .svc.grpcPort }}
  service: {{ .health }}
{{- end }}
{{- end }}

{{/*
Whether a service serves the web pages (the gateway, unless web.enabled is off).
Context: dict "root" $ "name" <service>.
*/}}
{{- define "kefu.servesWeb" -}}
{{- if and (eq .name "gateway") .root.Values.web.enabled }}true{{ end }}
{{- end }}

{{/*
The gateway's URL as browsers reach it (KEFU_PUBLIC_GATEWAY_URL), or empty.
*/}}
{{- define "kefu.publicGatewayUrl" -}}
{{- if .Values.web.publicGatewayUrl }}
{{- .Values.web.publicGatewayUrl }}
{{- else if .Values.ingress.enabled }}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host }}
{{- end }}
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
{{- if include "kefu.tls.secret" . }}
{{- $dir := include "kefu.tlsDir" . }}
KEFU_TLS_CERT: {{ printf "%s/tls.crt" $dir | quote }}
KEFU_TLS_KEY: {{ printf "%s/tls.key" $dir | quote }}
{{- if include "kefu.tls.mutual" . }}
KEFU_TLS_CLIENT_CA: {{ printf "%s/ca.crt" $dir | quote }}
{{- end }}
{{- if and $root.Values.tls.internal.enabled $svc.calls }}
KEFU_TLS_CA: {{ printf "%s/ca.crt" $dir | quote }}
{{- end }}
{{- end }}
{{- if eq .name "channels" }}
KEFU_CHANNELS_HTTP_PORT: {{ $root.Values.channels.httpPort | quote }}
KEFU_CHANNELS_SMTP_PORT: {{ $root.Values.channels.smtp.port | quote }}
KEFU_CHANNELS_MAX_MAIL_BYTES: {{ $root.Values.channels.smtp.maxMailBytes | int64 | quote }}
{{- if include "kefu.smtpTlsSecret" . }}
KEFU_CHANNELS_SMTP_TLS_CERT: {{ printf "%s/tls.crt" (include "kefu.smtpTlsDir" $root) | quote }}
KEFU_CHANNELS_SMTP_TLS_KEY: {{ printf "%s/tls.key" (include "kefu.smtpTlsDir" $root) | quote }}
{{- end }}
{{- end }}
{{- if eq .name "gateway" }}
KEFU_WEB_PORT: {{ ternary $root.Values.web.port 0 $root.Values.web.enabled | quote }}
{{- with include "kefu.publicGatewayUrl" $root }}
KEFU_PUBLIC_GATEWAY_URL: {{ . | quote }}
{{- end }}
{{- with $root.Values.web.origins }}
KEFU_WEB_ORIGINS: {{ join "," . | quote }}
{{- end }}
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
