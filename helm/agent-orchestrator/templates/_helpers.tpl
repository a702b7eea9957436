{{/* Names and labels. */}}
{{- define "orch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "orch.fullname" -}}
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

{{- define "orch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "orch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "orch.selector" (list $ "api") */}}
{{- define "orch.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "orch.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "orch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "orch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "orch.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The Secret mounted at /run/secrets: yours, the chart's, or none. */}}
{{- define "orch.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else if .Values.secrets.create -}}
{{- include "orch.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Environment every component shares; the ConfigMap adds .Values.config. */}}
{{- define "orch.env" -}}
- name: ORCH_STATE_DIR
  value: /var/lib/orchestrator
- name: ORCH_METRICS_DIR
  value: /tmp/metrics
- name: ORCH_SECRETS_DIR
  value: /run/secrets
{{- end -}}

{{/* Extra env of one component: include "orch.extraEnv" .Values.api.env */}}
{{- define "orch.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{- define "orch.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end -}}

{{/* The worker's pod security context: the restricted one, or what bubblewrap needs. */}}
{{- define "orch.workerPodSecurityContext" -}}
{{- $psc := deepCopy .Values.podSecurityContext -}}
{{- if .Values.worker.sandbox.bubblewrap -}}
{{- $seccomp := dict "type" .Values.worker.sandbox.seccompProfileType -}}
{{- if eq .Values.worker.sandbox.seccompProfileType "Localhost" -}}
{{- $_ := set $seccomp "localhostProfile" .Values.worker.sandbox.seccompLocalhostProfile -}}
{{- end -}}
{{- $_ := set $psc "seccompProfile" $seccomp -}}
{{- $_ := set $psc "appArmorProfile" (dict "type" .Values.worker.sandbox.appArmorProfileType) -}}
{{- end -}}
{{- toYaml $psc }}
{{- end -}}

{{- define "orch.workerSecurityContext" -}}
{{- $sc := deepCopy .Values.securityContext -}}
{{- if .Values.worker.sandbox.bubblewrap -}}
{{- $_ := set $sc "procMount" "Unmasked" -}}
{{- end -}}
{{- toYaml $sc }}
{{- end -}}

{{/* Volumes every pod has: state, /tmp, secrets. */}}
{{- define "orch.volumes" -}}
- name: state
  emptyDir:
    sizeLimit: {{ .Values.stateSizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if include "orch.secretName" . }}
- name: secrets
  secret:
    secretName: {{ include "orch.secretName" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "orch.volumeMounts" -}}
- name: state
  mountPath: /var/lib/orchestrator
- name: tmp
  mountPath: /tmp
{{- if include "orch.secretName" . }}
- name: secrets
  mountPath: /run/secrets
  readOnly: true
{{- end }}
{{- end -}}

{{- define "orch.workspacesVolume" -}}
- name: workspaces
{{- if .Values.workspaces.persistence }}
  persistentVolumeClaim:
    claimName: {{ .Values.workspaces.existingClaim | default (printf "%s-workspaces" (include "orch.fullname" .)) }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{/* Restarts pods when the settings change. */}}
{{- define "orch.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if and .Values.secrets.create (not .Values.secrets.existingSecret) }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end -}}
