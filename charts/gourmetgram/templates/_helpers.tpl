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

{{/* One KEY's value in images.env, the one image reference (registry, tag) of the repository's images. */}}
{{- define "gourmetgram.imagesEnv" -}}
{{- $line := regexFind (printf "(?m)^%s=.*$" .key) (.context.Files.Get "images.env") -}}
{{- $line | trimPrefix (printf "%s=" .key) | trimAll "\"" | trim -}}
{{- end -}}

{{/* An image built from this repository: <registry>/<name>:<tag> from images.env (scripts/build_images.sh
pushes exactly these); images.registry / images.tag in the values override it for one release. */}}
{{- define "gourmetgram.image" -}}
{{- $registry := default (include "gourmetgram.imagesEnv" (dict "context" .context "key" "IMAGE_REGISTRY")) .context.Values.images.registry -}}
{{- $tag := default (include "gourmetgram.imagesEnv" (dict "context" .context "key" "IMAGE_TAG")) .context.Values.images.tag -}}
{{- if not (and $registry $tag) -}}
{{- fail "no image registry/tag: charts/gourmetgram/images.env must set IMAGE_REGISTRY and IMAGE_TAG" -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9][a-z0-9._-]*$" .name) -}}
{{- fail (printf "image name %q: give the name only (e.g. food-transformer); the registry and tag come from images.env" .name) -}}
{{- end -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $registry) .name $tag -}}
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

{{/* The capture Broker's address: Knative's multi-tenant broker ingress, per namespace/name. */}}
{{- define "gourmetgram.brokerUrl" -}}
{{- printf "http://broker-ingress.knative-eventing.svc.cluster.local/%s/%s" .Values.namespace .Values.capture.broker.name -}}
{{- end -}}

{{/* Where the logger posts: the Broker when capture is on, else the detector directly. */}}
{{- define "gourmetgram.loggerUrl" -}}
{{- if .Values.capture.enabled -}}
{{- include "gourmetgram.brokerUrl" . -}}
{{- else -}}
{{- include "gourmetgram.detectorUrl" . -}}
{{- end -}}
{{- end -}}

{{/* The capture sink's object store location for captured images. */}}
{{- define "gourmetgram.captureObjectsUri" -}}
{{- $uri := default (printf "s3://gourmetgram-captures/%s" .Values.stage) .Values.capture.objectsUri | trimSuffix "/" -}}
{{- if not (hasPrefix "s3://" $uri) -}}
{{- fail (printf "capture.objectsUri %q is not an s3:// URI: the capture sink on the cluster writes to the object store" $uri) -}}
{{- end -}}
{{- $uri -}}
{{- end -}}

{{/* The cluster-local name of this release's API host (predict + feedback). */}}
{{- define "gourmetgram.apiLocalHost" -}}
{{- printf "%s-api.%s.svc.cluster.local" .Values.isvcName .Values.namespace -}}
{{- end -}}

{{/* The web app's API: explicit, else this release's API host, else the InferenceService. */}}
{{- define "gourmetgram.webappApiUrl" -}}
{{- if .Values.webapp.apiUrl -}}
{{- .Values.webapp.apiUrl -}}
{{- else if and .Values.capture.enabled .Values.capture.route.host -}}
{{- printf "http://%s" (include "gourmetgram.apiLocalHost" .) -}}
{{- else -}}
{{- printf "http://%s.%s.svc.cluster.local" .Values.isvcName .Values.namespace -}}
{{- end -}}
{{- end -}}

{{/* The web app's loop summary: explicit, else this release's capture sink's GET /summary, else none.
The web app reads the loop through the sink's API, never its database. */}}
{{- define "gourmetgram.webappSummaryUrl" -}}
{{- if .Values.webapp.feedbackSummaryUrl -}}
{{- .Values.webapp.feedbackSummaryUrl -}}
{{- else if .Values.capture.enabled -}}
{{- printf "http://%s.%s.svc.cluster.local/summary" .Values.capture.name .Values.namespace -}}
{{- end -}}
{{- end -}}

{{- define "gourmetgram.webappRetrainUrl" -}}
{{- if .Values.webapp.retrainUrl -}}
{{- .Values.webapp.retrainUrl -}}
{{- else if .Values.retrainReceiver.enabled -}}
{{- printf "http://%s.%s.svc.cluster.local:%v" .Values.retrainReceiver.name .Values.namespace .Values.retrainReceiver.port -}}
{{- end -}}
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

{{/*
KServe's storage initializer downloading the STABLE bundle (detector.bundleUri, else
model.bundleUri) to /mnt/models (volume model-bundle): the detector's reference and the
capture sink's class names come from it.
*/}}
{{- define "gourmetgram.bundleInitContainer" -}}
- name: storage-initializer
  image: {{ .Values.detector.storageInitializer.image }}
  args:
    - {{ include "gourmetgram.detectorBundleUri" . }}
    - /mnt/models
  envFrom:
    - secretRef:
        name: {{ .Values.detector.s3SecretName }}
  env:
    # KServe's storage initializer reads AWS_ENDPOINT_URL (not S3_ENDPOINT); without
    # it the download goes to AWS. Required: a Secret lacking it stops the pod with
    # CreateContainerConfigError naming the key instead of a silent AWS call.
    - name: AWS_ENDPOINT_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.detector.s3SecretName }}
          key: AWS_ENDPOINT_URL
  volumeMounts:
    - name: model-bundle
      mountPath: /mnt/models
{{- end -}}
