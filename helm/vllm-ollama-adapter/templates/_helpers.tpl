{{/* Names: <release>-<chart> unless the release already says it, within Kubernetes' 63 characters. */}}
{{- define "vllm-ollama-adapter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vllm-ollama-adapter.fullname" -}}
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

{{- define "vllm-ollama-adapter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "vllm-ollama-adapter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component (gateway, vllm, ollama-vision, warm): pass (list $ "gateway"). */}}
{{- define "vllm-ollama-adapter.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "vllm-ollama-adapter.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "vllm-ollama-adapter.gatewayName" -}}
{{- printf "%s-gateway" (include "vllm-ollama-adapter.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vllm-ollama-adapter.ollamaName" -}}
{{- printf "%s-ollama-vision" (include "vllm-ollama-adapter.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vllm-ollama-adapter.gatewayImage" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) -}}
{{- end -}}

{{/*
Every vLLM runtime as a JSON list: each entry of .Values.models, then its canary (<name>-canary) with
the canary's keys laid over the entry's (replicas 1 unless it says). Each gets `resource` (its
StatefulSet and headless Service name), `backend` (its catalog backend name) and `urls` (one per pod,
as the gateway reaches it through the headless Service).
*/}}
{{- define "vllm-ollama-adapter.runtimes" -}}
{{- $root := . -}}
{{- $fullname := include "vllm-ollama-adapter.fullname" . -}}
{{- $runtimes := list -}}
{{- range $model := .Values.models -}}
{{- $entries := list (omit $model "canary") -}}
{{- if $model.canary -}}
{{- $canary := mergeOverwrite (deepCopy (omit $model "canary")) (dict "replicas" 1) (omit (deepCopy $model.canary) "share") -}}
{{- $_ := set $canary "name" (printf "%s-canary" $model.name) -}}
{{- $_ := set $canary "canaryOf" $model.name -}}
{{- $entries = append $entries $canary -}}
{{- end -}}
{{- range $entry := $entries -}}
{{- $resource := printf "%s-%s" $fullname $entry.name -}}
{{- if gt (len $resource) 52 -}}
{{- fail (printf "models: %q makes the StatefulSet name %q, longer than Kubernetes' 52 characters for one: shorten the model's name or the release's (or fullnameOverride)" $entry.name $resource) -}}
{{- end -}}
{{- $urls := list -}}
{{- range $i := until (int $entry.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc:8000" $resource $i $resource $root.Release.Namespace) -}}
{{- end -}}
{{- $runtime := merge (dict "resource" $resource "backend" $entry.name "urls" $urls) $entry -}}
{{- $runtimes = append $runtimes $runtime -}}
{{- end -}}
{{- end -}}
{{- toJson $runtimes -}}
{{- end -}}

{{/* The Ollama Vision URL the gateway uses. */}}
{{- define "vllm-ollama-adapter.visionUrl" -}}
{{- if .Values.ollamaVision.enabled -}}
{{- printf "http://%s.%s.svc:11434" (include "vllm-ollama-adapter.ollamaName" .) .Release.Namespace -}}
{{- else if .Values.ollamaVision.url -}}
{{- .Values.ollamaVision.url -}}
{{- else -}}
{{- fail "ollamaVision.url: set it to the Ollama that serves images and embeddings when ollamaVision.enabled is false" -}}
{{- end -}}
{{- end -}}

{{/* Restricted pod-security settings for the containers that need no privilege. */}}
{{- define "vllm-ollama-adapter.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The collector's base URL when tracing is on, checked, else "". The gateway and vLLM export OTLP over
HTTP/protobuf only: gRPC's port 4317 is refused here, as the gateway would refuse the gRPC protocol at
start (and an HTTP exporter pointed at a gRPC receiver only loses spans). /v1/traces is added per use.
*/}}
{{- define "vllm-ollama-adapter.otlpEndpoint" -}}
{{- $t := .Values.tracing -}}
{{- if $t.enabled -}}
{{- $endpoint := trimSuffix "/" $t.otlpEndpoint -}}
{{- if not $endpoint -}}
{{- fail "tracing.otlpEndpoint: set it to the collector's OTLP/HTTP URL (e.g. http://otel-collector.observability:4318) when tracing.enabled is true" -}}
{{- end -}}
{{- if regexMatch ":4317(/|$)" $endpoint -}}
{{- fail (printf "tracing.otlpEndpoint: %s is on OTLP/gRPC's port 4317; the gateway and vLLM export OTLP over HTTP/protobuf only: give the collector's OTLP/HTTP receiver (port 4318)" $endpoint) -}}
{{- end -}}
{{- if hasSuffix "/v1/traces" $endpoint -}}
{{- fail (printf "tracing.otlpEndpoint: %s: give the collector's base URL, without /v1/traces (the chart adds it)" $endpoint) -}}
{{- end -}}
{{- $endpoint -}}
{{- end -}}
{{- end -}}

{{/*
Environment entries every traced container shares: its service name, the pod's name and namespace as
resource attributes (the downward API), the collector's headers. Pass (list $ "service-name").
*/}}
{{- define "vllm-ollama-adapter.tracingEnv" -}}
{{- $root := index . 0 -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_SERVICE_NAME
  value: {{ index . 1 | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(POD_NAME),k8s.namespace.name=%s" $root.Release.Namespace | quote }}
{{- with $root.Values.tracing.headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.tracing.headersSecret.key }}
{{- end }}
{{- end -}}

{{/* Where the gateway pods mount tenants.keysSecret (keys.yaml and keys.yaml.secrets). */}}
{{- define "vllm-ollama-adapter.tenantsDir" -}}
/etc/vllm-ollama-adapter-tenants
{{- end -}}
