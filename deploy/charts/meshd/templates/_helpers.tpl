{{/* Labels on every object's metadata (not on selectors). */}}
{{- define "meshd.labels" -}}
app.kubernetes.io/part-of: meshd
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* debugLoopback: "true" when the debug API listens on loopback only. */}}
{{- define "meshd.debugLoopback" -}}
{{- $a := .Values.debug.address -}}
{{- if or (hasPrefix "127." $a) (hasPrefix "localhost:" $a) (hasPrefix "[::1]:" $a) }}true{{ end -}}
{{- end }}

{{/* issuerRef: meshd serve --issuer-ref, empty for the internal CA. */}}
{{- define "meshd.issuerRef" -}}
{{- with .Values.issuer -}}
{{- if .kind -}}
{{- if not .name }}{{ fail "issuer.name is required with issuer.kind" }}{{ end -}}
{{- if has .kind (list "Issuer" "ClusterIssuer") -}}
{{- if .group }}{{ printf "%s/%s/%s" .kind .name .group }}{{ else }}{{ printf "%s/%s" .kind .name }}{{ end -}}
{{- else -}}
{{- if not .group }}{{ fail "issuer.group is required for an external issuer kind" }}{{ end -}}
{{- printf "%s/%s/%s" .kind .name .group -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* Checks of values that meshd would refuse at start. */}}
{{- define "meshd.validate" -}}
{{- if not (has .Values.debug.auth (list "token" "kubernetes")) }}{{ fail "debug.auth: want token or kubernetes" }}{{ end -}}
{{- if and (eq .Values.debug.auth "token") (not (include "meshd.debugLoopback" .)) (not .Values.debug.tokenSecret) -}}
{{ fail "debug.address is not loopback: set debug.tokenSecret, or debug.auth kubernetes (meshd refuses an exposed debug API without auth)" }}
{{- end -}}
{{- if and .Values.issuer.approve (not (has .Values.issuer.kind (list "Issuer" "ClusterIssuer"))) -}}
{{ fail "issuer.approve renders RBAC for an Issuer or ClusterIssuer; for other issuers grant the approve verb yourself (deploy/examples/cert-manager-approve-rbac.yaml)" }}
{{- end -}}
{{- end }}
