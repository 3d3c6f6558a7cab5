{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "ehc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name when it already contains the chart name. */}}
{{- define "ehc.fullname" -}}
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

{{- define "ehc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ehc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ehc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ehc.labels" -}}
helm.sh/chart: {{ include "ehc.chart" . }}
{{ include "ehc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: endpoint-health-checker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ehc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ehc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ehc.leaseName" -}}
{{- default (printf "%s-leader" (include "ehc.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "ehc.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The detection settings of the chosen profile, overridden one by one by `settings`; a YAML map of
environment variable -> value. `balanced` is ehc's own defaults.
*/}}
{{- define "ehc.detection" -}}
{{- $profiles := dict
  "fast"     (dict "interval" "500ms" "timeout" "250ms" "retryCount" 3 "confirmSpacing" "50ms"  "recoveryThreshold" 2)
  "balanced" (dict "interval" "1s"    "timeout" "500ms" "retryCount" 5 "confirmSpacing" "50ms"  "recoveryThreshold" 2)
  "tolerant" (dict "interval" "2s"    "timeout" "1s"    "retryCount" 7 "confirmSpacing" "100ms" "recoveryThreshold" 3)
}}
{{- $p := get $profiles .Values.profile }}
{{- if not $p }}
{{- fail (printf "profile %q is not one of fast, balanced, tolerant" .Values.profile) }}
{{- end }}
{{- $s := .Values.settings }}
{{- $pick := dict }}
{{- range $key := list "interval" "timeout" "retryCount" "confirmSpacing" "recoveryThreshold" }}
{{- $v := get $s $key }}
{{- if or (kindIs "invalid" $v) (eq (toString $v) "") }}
{{- $_ := set $pick $key (get $p $key) }}
{{- else }}
{{- $_ := set $pick $key $v }}
{{- end }}
{{- end }}
HEALTH_CHECK_INTERVAL: {{ $pick.interval | toString | quote }}
HEALTH_CHECK_TIMEOUT: {{ $pick.timeout | toString | quote }}
HEALTH_CHECK_RETRY_COUNT: {{ $pick.retryCount | toString | quote }}
EHC_CONFIRM_SPACING: {{ $pick.confirmSpacing | toString | quote }}
EHC_RECOVERY_THRESHOLD: {{ $pick.recoveryThreshold | toString | quote }}
{{- end }}

{{/* Container resources: explicit `resources`, else requests sized from `workers`. */}}
{{- define "ehc.resources" -}}
{{- if .Values.resources }}
{{- toYaml .Values.resources }}
{{- else }}
{{- $w := int .Values.workers }}
{{- $z := .Values.sizing }}
{{- $cpu := add (int $z.baseCpuMillicores) (mul $w (int $z.cpuMillicoresPerWorker)) }}
{{- $mem := add (int $z.baseMemoryMiB) (mul $w (int $z.memoryMiBPerWorker)) }}
requests:
  cpu: {{ printf "%dm" $cpu }}
  memory: {{ printf "%dMi" $mem }}
limits:
  memory: {{ printf "%dMi" (mul 2 $mem) }}
{{- end }}
{{- end }}

{{/*
What selectorless Services need: read the opted-in EndpointSlices and Endpoints (get only after a
write conflict) and patch their readiness.
*/}}
{{- define "ehc.selectorlessRules" -}}
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["endpoints"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
