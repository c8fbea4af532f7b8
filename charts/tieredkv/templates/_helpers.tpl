{{/* Names, labels and small values shared by the templates. */}}

{{- define "tieredkv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-tieredkv, or the release name alone when it already says tieredkv. */}}
{{- define "tieredkv.fullname" -}}
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

{{/* Selector labels: stable for the life of a release (no chart version, no app version). */}}
{{- define "tieredkv.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tieredkv.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "tieredkv.labels" -}}
{{ include "tieredkv.selectorLabels" . }}
app.kubernetes.io/part-of: tieredkv
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tieredkv.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tieredkv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tieredkv.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The kopf peering object (cluster-wide or one per watched namespace) shares the release's name. */}}
{{- define "tieredkv.peeringName" -}}
{{- include "tieredkv.fullname" . }}
{{- end }}

{{- define "tieredkv.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "tieredkv.fullname" .) }}
{{- end }}

{{/* Host of webhook.url (without port), which the generated certificate must name. */}}
{{- define "tieredkv.webhookUrlHost" -}}
{{- if .Values.webhook.url }}
{{- $host := (urlParse .Values.webhook.url).host }}
{{- regexReplaceAll ":[0-9]+$" $host "" | trimPrefix "[" | trimSuffix "]" }}
{{- end }}
{{- end }}

{{/* The names the Service answers to; the serving certificate carries them all. */}}
{{- define "tieredkv.webhookDNSNames" -}}
{{- $svc := include "tieredkv.fullname" . }}
{{- $names := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) }}
{{- $host := include "tieredkv.webhookUrlHost" . }}
{{- if and $host (not (regexMatch "^[0-9.:]+$" $host)) }}
{{- $names = append $names $host }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{- define "tieredkv.webhookIPs" -}}
{{- $host := include "tieredkv.webhookUrlHost" . }}
{{- if and $host (regexMatch "^[0-9.:]+$" $host) }}
{{- toJson (list $host) }}
{{- else }}
{{- toJson list }}
{{- end }}
{{- end }}
