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

{{/* drainFailurePolicy spelled as the binary parses it (any case, dashes ignored),
returned as KeepRefusing, Release or Force ("" when unset); anything else fails the
render, not the pod. The ClusterRole's delete on pods follows Force in any spelling. */}}
{{- define "reboot-manager.drainFailurePolicy" -}}
{{- $v := .Values.drainFailurePolicy | toString | trim -}}
{{- $k := $v | lower | replace "-" "" -}}
{{- if eq $k "keeprefusing" -}}KeepRefusing
{{- else if eq $k "release" -}}Release
{{- else if eq $k "force" -}}Force
{{- else if ne $k "" -}}
{{- fail (printf "drainFailurePolicy: want KeepRefusing, Release or Force (or empty), got %q" $v) -}}
{{- end -}}
{{- end -}}

{{/* cloud: "" or aws, the values --cloud accepts. */}}
{{- define "reboot-manager.cloud" -}}
{{- $v := .Values.cloud | toString -}}
{{- if and $v (ne $v "aws") -}}
{{- fail (printf "cloud: want aws (or empty), got %q" $v) -}}
{{- end -}}
{{- $v -}}
{{- end -}}
