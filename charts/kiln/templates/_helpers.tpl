{{/* Names and labels. */}}

{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kiln.fullname" -}}
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

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kiln
{{- end }}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kiln.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
RBAC rules. Least privilege, no wildcards; each rule says who needs it. Rules on namespaced
resources go into a ClusterRole (whole cluster) or into a Role per watched namespace;
rules on cluster-scoped resources always go into a ClusterRole.
*/}}

{{- define "kiln.rules.framework.namespaced" -}}
# Kopf posts Events about the objects it handles (kopf.event, handler errors). Peering objects
# (kopf.dev KopfPeering) are not needed: Kopf runs `--standalone`; kiln's Lease elects.
# kiln watches Events (read-only) for the Job controller's FailedCreate on build Jobs (quota,
# Pod Security, LimitRange, PriorityClass), which no other object records.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, list, watch]
{{- end }}

{{- define "kiln.rules.framework.cluster" -}}
# Kopf watches CRDs to notice kiln's CRDs being installed or upgraded (read-only).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# Kopf lists and watches Namespaces when it serves named namespaces. Cluster-wide (-A), it
# uses cluster-wide endpoints and does not look at Namespaces at all.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}

{{- define "kiln.rules.kiln.namespaced" -}}
# kiln's own objects: watched by Kopf. patch only lets Kopf take off a finalizer an older kiln
# (one timer per object) left; kiln never writes a user's spec or metadata.
- apiGroups: [kiln.dev]
  resources: [enginebuilds, enginedeployments]
  verbs: [get, list, watch, patch]
# Status (observedGeneration, conditions, engines) through the status subresource.
- apiGroups: [kiln.dev]
  resources: [enginebuilds/status, enginedeployments/status]
  verbs: [get, patch, update]
# Build Jobs: one per engine key, created, re-owned (patch), deleted when no EngineBuild wants it.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Build pods: their termination messages carry the builder's result or structured error.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Source credentials (spec.model.credentialsSecret), to compute the weights identity. Read one
# named Secret at a time: no list, no watch, never written.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Serving: one Deployment per GPU product, one Service, a PodDisruptionBudget, the
# trtllm-serve LLM API options in a ConfigMap. Each is watched (list, watch; selected by the
# label kiln.dev/engine-deployment) so that one deleted or edited is repaired at once.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, update, delete]
# ConfigMaps kiln owns: the public keys serving pods verify engines with, and trtllm-serve's
# LLM API options; one of each per EngineDeployment (created, then applied only while it
# carries that owner reference). list and watch: the watch with that label's selector (RBAC
# cannot scope by label; the API server sends kiln only those).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, update, delete]
{{- end }}

{{- define "kiln.rules.kiln.cluster" -}}
# GPU pool index: which GPU products (GPU Feature Discovery labels) the nodes have.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
{{- end }}
