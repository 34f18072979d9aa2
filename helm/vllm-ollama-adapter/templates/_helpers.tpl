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
