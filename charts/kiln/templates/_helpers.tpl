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
RBAC rules: exactly kiln.kube.rights.RIGHTS (tests/chart checks the rendered rules against it;
docs/security.md lists each with its reason). No wildcards. Three sets:
- watched: reads (list, watch), in a ClusterRole cluster-wide or a Role per watched namespace;
- served: Secrets and every write, only in the namespaces kiln serves: a Role per watched
  namespace, or cluster-wide the ClusterRole <fullname>-serve bound by a RoleBinding in each
  served namespace (servedNamespaces, or one an admin adds): never a ClusterRoleBinding;
- cluster: cluster-scoped resources, in a ClusterRole.
*/}}

{{- /* The namespaces kiln serves: where it may read Secrets and write. */}}
{{- define "kiln.servedNamespaces" -}}
{{- $served := .Values.watchNamespaces | default .Values.servedNamespaces }}
{{- with .Values.builder.buildNamespace }}{{ $served = append $served . }}{{ end }}
{{- toJson (uniq $served) }}
{{- end }}

{{- define "kiln.rules.watched" -}}
# kiln's objects, watched and indexed.
- apiGroups: [kiln.dev]
  resources: [enginebuilds, enginedeployments]
  verbs: [list, watch]
# Build Jobs (labelled kiln.dev/key), indexed by key.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch]
# Build pods' termination messages (the builder's report); serving pods' readiness and reports.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# The Job controller's FailedCreate on build Jobs (quota, Pod Security, LimitRange,
# PriorityClass), which no other object records.
- apiGroups: [""]
  resources: [events]
  verbs: [list, watch]
# Serving children (labelled kiln.dev/engine-deployment), watched so that one deleted or edited
# is repaired at once. RBAC cannot hold a watch to a label selector: cluster-wide this reads
# every ConfigMap (install with watchNamespaces to avoid it).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [list, watch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch]
# Kueue's Workloads of queued build Jobs: why Kueue holds one (quota, priority, flavor). Where
# Kueue is not installed, nothing is watched.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, watch]
{{- end }}

{{- define "kiln.rules.served" -}}
# Status through the status subresource (observedGeneration, conditions, engines).
- apiGroups: [kiln.dev]
  resources: [enginebuilds/status, enginedeployments/status]
  verbs: [patch]
# Kopf takes off a finalizer an older kiln (one timer per object) left; kiln never writes a
# user's spec or metadata.
- apiGroups: [kiln.dev]
  resources: [enginebuilds, enginedeployments]
  verbs: [patch]
# Build Jobs: one per engine key, read, created, re-owned (patch), deleted when unwanted.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, create, patch, delete]
# Source credentials (spec.model.credentialsSecret), for the weights identity and origin. One
# named Secret at a time: no list, no watch, never written.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# One serving Deployment per GPU product: read, created, applied, deleted when its product goes.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch, delete]
# The Service, PodDisruptionBudget, trusted-keys and LLM API ConfigMaps of an EngineDeployment:
# read, created, applied; garbage-collected with it (no delete).
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
# Events about the objects kiln handles (Kopf's and kiln's own).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{- define "kiln.rules.cluster" -}}
# The GPU pool index: which GPU products (GPU Feature Discovery labels) the nodes have.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
# Kopf notices kiln's CRDs being installed or upgraded (read-only).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# Kopf follows the named namespaces it serves. Cluster-wide it does not look at Namespaces.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
