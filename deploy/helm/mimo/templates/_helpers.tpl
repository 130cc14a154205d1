{{/* Names and labels shared by the templates. */}}
{{- define "mimo.labels" -}}
app.kubernetes.io/name: mimo
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "mimo.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- define "mimo.tokenSecret" -}}
{{ default (printf "%s-token" .Release.Name) .Values.auth.existingSecret }}
{{- end -}}
