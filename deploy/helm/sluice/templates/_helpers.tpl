{{- define "sluice.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.labels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sluice.selector" -}}
app.kubernetes.io/name: {{ include "sluice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluice.secretName" -}}
{{- if .Values.storage.existingSecret -}}
{{- .Values.storage.existingSecret -}}
{{- else -}}
{{- printf "%s-storage" (include "sluice.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "sluice.hasCredentials" -}}
{{- if or .Values.storage.existingSecret .Values.storage.accessKeyId -}}true{{- end -}}
{{- end -}}

{{/* etcd endpoints, comma separated */}}
{{- define "sluice.etcdEndpoints" -}}
{{- if .Values.etcd.bundled -}}
{{- printf "http://%s-etcd:2379" (include "sluice.fullname" .) -}}
{{- else -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by coordinator and worker containers. */}}
{{- define "sluice.commonEnv" -}}
- name: SLUICE_ETCD
  value: {{ include "sluice.etcdEndpoints" . | quote }}
{{- if include "sluice.hasCredentials" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "sluice.secretName" . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sluice.secretName" . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end -}}

{{- define "sluice.configChecksum" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{- define "sluice.authSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- printf "%s-auth" (include "sluice.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "sluice.authEnabled" -}}
{{- if or .Values.auth.existingSecret .Values.auth.tokens -}}true{{- end -}}
{{- end -}}

{{- define "sluice.scheme" -}}
{{- if .Values.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* TLS environment: the coordinator serves with the certificate; workers trust the CA and, under mutual TLS, present the certificate. */}}
{{- define "sluice.tlsEnv" -}}
{{- if .root.Values.tls.enabled }}
{{- if eq .role "coordinator" }}
- name: SLUICE_TLS_CERT
  value: /etc/sluice/tls/tls.crt
- name: SLUICE_TLS_KEY
  value: /etc/sluice/tls/tls.key
{{- if .root.Values.tls.mutual }}
- name: SLUICE_TLS_CLIENT_CA
  value: /etc/sluice/tls/ca.crt
{{- end }}
{{- else }}
- name: SLUICE_TLS_CA
  value: /etc/sluice/tls/ca.crt
{{- if .root.Values.tls.mutual }}
- name: SLUICE_TLS_CLIENT_CERT
  value: /etc/sluice/tls/tls.crt
- name: SLUICE_TLS_CLIENT_KEY
  value: /etc/sluice/tls/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
