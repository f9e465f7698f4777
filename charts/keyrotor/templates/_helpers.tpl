{{/* Chart name, overridable. */}}
{{- define "keyrotor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "keyrotor.fullname" -}}
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

{{- define "keyrotor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyrotor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keyrotor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "keyrotor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyrotor
{{- end }}

{{- define "keyrotor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keyrotor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
What the operator may do on the namespaced objects it manages: the same rules in the
ClusterRole (all namespaces) and in each per-namespace Role (watchNamespaces).
*/}}
{{- define "keyrotor.managedRules" -}}
- apiGroups: ["keyrotor.dev"]
  resources: ["jwtsigningkeys"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["keyrotor.dev"]
  resources: ["jwtsigningkeys/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# kube-runtime's event Recorder writes events.k8s.io/v1 Events: create, then patch
# the same Event to count repeats.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Whether the JwksBundle controller runs: bundles.enabled, and only cluster-wide (a
bundle publishes into namespaces picked at run time by label, which needs rights in
every namespace; with watchNamespaces the chart grants nothing cluster-wide).
*/}}
{{- define "keyrotor.bundles" -}}
{{- if and .Values.bundles.enabled (not .Values.watchNamespaces) }}true{{ end }}
{{- end }}

{{/*
The rules the JwksBundle controller adds to the ClusterRole: the bundles themselves
(patch: the cleanup finalizer), their status, and the Namespaces it publishes into.
ConfigMaps and Events in every namespace (a bundle's Events land in `default`) are
already granted by the managed rules.
*/}}
{{- define "keyrotor.bundleRules" -}}
- apiGroups: ["keyrotor.dev"]
  resources: ["jwksbundles"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["keyrotor.dev"]
  resources: ["jwksbundles/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
