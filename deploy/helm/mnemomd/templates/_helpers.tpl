{{- define "mnemomd.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mnemomd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mnemomd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mnemomd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mnemomd
{{- end -}}

{{- define "mnemomd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mnemomd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mnemomd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mnemomd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mnemomd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The settings of the ConfigMap, and of the migration hook (which runs before the
ConfigMap exists): the values' config, then what the chart fixes. */}}
{{- define "mnemomd.settings" -}}
{{- $settings := dict -}}
{{- range $key, $value := .Values.config -}}
{{- $_ := set $settings $key (toString $value) -}}
{{- end -}}
{{- $_ := set $settings "MIGRATE_ON_START" "false" -}}
{{- $_ := set $settings "MNEMOM_DATA_DIR" "/data" -}}
{{- $_ := set $settings "SHUTDOWN_GRACE_SECONDS" (toString .Values.shutdownGraceSeconds) -}}
{{- toYaml $settings -}}
{{- end -}}

{{- define "mnemomd.terminationGracePeriodSeconds" -}}
{{- add .Values.shutdownGraceSeconds .Values.preStopSleepSeconds 10 -}}
{{- end -}}

{{/* The pod spec parts every mnemomd container shares. */}}
{{- define "mnemomd.volumes" -}}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataVolume.sizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "mnemomd.volumeMounts" -}}
- name: data
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "mnemomd.secretEnvFrom" -}}
- secretRef:
    name: {{ .Values.existingSecret }}
{{- end -}}
