{{/* Common labels (app.kubernetes.io/*) on every object. */}}
{{- define "gourmetgram.labels" -}}
app.kubernetes.io/name: gourmetgram
app.kubernetes.io/instance: {{ .Values.isvcName }}
app.kubernetes.io/part-of: gourmetgram
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Values.model.version | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
gourmetgram.io/stage: {{ .Values.stage }}
{{- end -}}

{{/* The bundle root without a trailing slash. */}}
{{- define "gourmetgram.bundleUri" -}}
{{- $uri := required "model.bundleUri is required" .Values.model.bundleUri | trimSuffix "/" -}}
{{- if not (regexMatch "^(s3|gs|https?|pvc|oci)://" $uri) -}}
{{- fail (printf "model.bundleUri %q is not an object-store URI (s3://<bucket>/<model>/<version>): a cluster InferenceService cannot read a local path" $uri) -}}
{{- end -}}
{{- $uri -}}
{{- end -}}


{{/* In-cluster URL of the drift detector (the logger sink). */}}
{{- define "gourmetgram.detectorUrl" -}}
{{- printf "http://%s.%s.svc.cluster.local" .Values.detector.name .Values.namespace -}}
{{- end -}}

{{/* True when a canary percentage is set (0 is a valid value: pin to prev). */}}
{{- define "gourmetgram.hasCanary" -}}
{{- if not (kindIs "invalid" .Values.canary.trafficPercent) -}}
{{- $p := int .Values.canary.trafficPercent -}}
{{- if or (lt $p 0) (gt $p 100) -}}
{{- fail (printf "canary.trafficPercent must be within 0..100, got %v" .Values.canary.trafficPercent) -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* The bundle the drift detector takes its reference from (the stable model). */}}
{{- define "gourmetgram.detectorBundleUri" -}}
{{- default (include "gourmetgram.bundleUri" .) .Values.detector.bundleUri | trimSuffix "/" -}}
{{- end -}}

{{/* The web app's --stage values: STAGE:served=kube:NS/ISVC,detector=URL, space-separated. */}}
{{- define "gourmetgram.webappStages" -}}
{{- $out := list -}}
{{- range .Values.webapp.stages -}}
{{- $detector := printf "http://%s.%s.svc.cluster.local" $.Values.detector.name .namespace -}}
{{- $out = append $out (printf "%s:served=kube:%s/%s,detector=%s" .stage .namespace .isvc $detector) -}}
{{- end -}}
{{- join " " $out -}}
{{- end -}}
