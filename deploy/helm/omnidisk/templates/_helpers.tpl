{{/*
The CSI driver name. It is fixed: volumes record it, so it can never change.
*/}}
{{- define "omnidisk.driverName" -}}
omnidisk.csi.dev
{{- end -}}

{{/*
Labels shared by every object. The kustomize manifests carry the same ones;
the Helm-only labels come after them and are ignored when the two are
compared (deploy/test/compare.py).
*/}}
{{- define "omnidisk.labels" -}}
app.kubernetes.io/name: omnidisk
app.kubernetes.io/part-of: omnidisk
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Selector labels of one component (controller or node); never change them,
selectors are immutable.
*/}}
{{- define "omnidisk.selector" -}}
app.kubernetes.io/name: omnidisk
app.kubernetes.io/component: {{ . }}
{{- end -}}

{{- define "omnidisk.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* An image reference from a {repository, tag} map. */}}
{{- define "omnidisk.sidecarImage" -}}
{{ .repository }}:{{ .tag }}
{{- end -}}

{{/* "true" when any listed instance is of a cloud (attach-requiring) kind. */}}
{{- define "omnidisk.hasCloud" -}}
{{- $found := false -}}
{{- range .Values.instances -}}
{{- if or (eq .kind "aws-ebs") (eq .kind "aliyun-disk") -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if $found -}}true{{- end -}}
{{- end -}}

{{/* "true" when any listed instance is node-local (local-lvm). */}}
{{- define "omnidisk.hasLvm" -}}
{{- $found := false -}}
{{- range .Values.instances -}}
{{- if eq .kind "local-lvm" -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if $found -}}true{{- end -}}
{{- end -}}

{{/* Fails rendering when the instance list names an unknown kind. */}}
{{- define "omnidisk.checkInstances" -}}
{{- range .Values.instances -}}
{{- if not (has .kind (list "aws-ebs" "aliyun-disk" "local-lvm")) -}}
{{- fail (printf "instances: %s has kind %q; expected aws-ebs, aliyun-disk or local-lvm" .name .kind) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.instances -}}
{{- fail "instances: list the provider instances of the configuration Secret" -}}
{{- end -}}
{{- end -}}

{{/* The config volume, shared by the controller and node pods. */}}
{{- define "omnidisk.configVolume" -}}
- name: config
  secret:
    secretName: {{ .Values.config.existingSecret }}
    defaultMode: 0400
    items:
      - key: {{ .Values.config.key }}
        path: config.toml
{{- end -}}

{{/* The env every sidecar and driver container gets. */}}
{{- define "omnidisk.downwardEnv" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{/*
"true" when a listed instance serves CSI ephemeral inline volumes: of the
built-in kinds only local-lvm can, and only while its `ephemeral` is not
false (the driver's [node.ephemeral] default takes every node-local
instance). Fails when a cloud instance asks for them.
*/}}
{{- define "omnidisk.hasEphemeral" -}}
{{- $found := false -}}
{{- range .Values.instances -}}
{{- $wanted := ternary .ephemeral (eq .kind "local-lvm") (hasKey . "ephemeral") -}}
{{- if and $wanted (ne .kind "local-lvm") -}}
{{- fail (printf "instances: %s has ephemeral: true, but kind %s cannot serve inline ephemeral volumes (only local-lvm can)" .name .kind) -}}
{{- end -}}
{{- if $wanted -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if $found -}}true{{- end -}}
{{- end -}}

{{/*
API-gated objects: rendered only where the cluster serves their kind (helm
discovers it at install; `helm template` needs --api-versions).
*/}}
{{- define "omnidisk.servesAttributesClasses" -}}
{{- if .Capabilities.APIVersions.Has "storage.k8s.io/v1/VolumeAttributesClass" -}}true{{- end -}}
{{- end -}}

{{- define "omnidisk.servesSnapshotClasses" -}}
{{- if .Capabilities.APIVersions.Has "snapshot.storage.k8s.io/v1/VolumeSnapshotClass" -}}true{{- end -}}
{{- end -}}

{{- define "omnidisk.servesGroupSnapshotClasses" -}}
{{- if .Capabilities.APIVersions.Has "groupsnapshot.storage.k8s.io/v1/VolumeGroupSnapshotClass" -}}true{{- end -}}
{{- end -}}

{{/*
"true" when csi-snapshotter runs with group snapshots: the cluster serves
groupsnapshot.storage.k8s.io/v1. csi-snapshotter 8.6.0 with the gate on and
the CRDs missing stops serving plain VolumeSnapshots too, so the gate
follows the API.
*/}}
{{- define "omnidisk.groupSnapshots" -}}
{{- if include "omnidisk.servesGroupSnapshotClasses" . -}}true{{- end -}}
{{- end -}}

{{/*
A listen address on the pod IP (`status.podIP` in $(POD_IP)): reachable by
the kubelet's probes and a scraper, never bound to every interface of a
host-network pod. IPv6 addresses need brackets.
*/}}
{{- define "omnidisk.podAddress" -}}
{{- if eq .root.Values.ipFamily "IPv6" -}}
[$(POD_IP)]:{{ .port }}
{{- else -}}
$(POD_IP):{{ .port }}
{{- end -}}
{{- end -}}

{{- define "omnidisk.podIPEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}
