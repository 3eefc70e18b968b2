{{/* The name of every object: the release name, or RELEASE-reboot-manager. */}}
{{- define "reboot-manager.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; also the selector, which must not change across upgrades. */}}
{{- define "reboot-manager.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
{{- end -}}

{{- define "reboot-manager.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "reboot-manager.basicAuthSecret" -}}
{{- .Values.basicAuth.secretName | default (printf "%s-basic-auth" (include "reboot-manager.fullname" .)) -}}
{{- end -}}

{{- define "reboot-manager.notifySecret" -}}
{{- .Values.notify.secretName | default (printf "%s-notify" (include "reboot-manager.fullname" .)) -}}
{{- end -}}
